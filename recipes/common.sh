# Shared part of the Perception-R1 recipes; sourced by recipes/<task>.sh after it sets TASK.
#
# Finds (or, on a fresh machine, creates) a Python environment with verl and this package
# (PYTHON, else python3, else the project venv), and defines `preflight`, the CPU part of a recipe. Settings: the environment
# variables of docs/recipe_config.md (MODEL_PATH, DATA_DIR, DATASET_ROOT, N_GPUS_PER_NODE,
# NNODES, EXPERIMENT_NAME, LOGGER, LORA_RANK, CURRICULUM, FILTER_GROUPS, THINK, MIX, DRY_RUN, PYTHON, ...).
set -euo pipefail

: "${TASK:?recipes/common.sh is sourced by a recipe that sets TASK}"
# pr1_venv (the project venv: torch pinned first on CPU, the gpu extra on CUDA) and pr1_has_cuda.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"

# The Hydra config folder of the recipes: <task>.yaml over base.yaml over verl's ppo_trainer.
RECIPE_CONFIG="$PR1_ROOT/recipes/config"
# Prepared data goes under the checkout unless DATA_DIR says otherwise.
export DATA_DIR="${DATA_DIR:-$PR1_ROOT/data}"

log() { printf '[%s] %s\n' "$TASK" "$*" >&2; }

# True when interpreter "$1" exists and imports the modules "$2" (comma-separated).
imports() { command -v "$1" >/dev/null 2>&1 && "$1" -c "import $2" >/dev/null 2>&1; }

# What training needs beside this package: verl, and vLLM on a CUDA machine.
engine_modules() { if pr1_has_cuda; then echo "verl, vllm"; else echo "verl"; fi; }

# The interpreter to run: $PYTHON or python3 when they already have verl (and vLLM), used as
# they are (this package is added to them if missing); else the project venv, created and
# installed on first use.
find_python() {
  local candidate engine
  engine="$(engine_modules)"
  for candidate in "${PYTHON:-}" python3 "$PR1_VENV/bin/python"; do
    [[ -n "$candidate" ]] && imports "$candidate" "$engine" || continue
    if ! imports "$candidate" perception_r1_verl; then
      log "adding this package to $(command -v "$candidate")'s environment (its $engine stay)"
      "$candidate" -m pip install -q -e "$PR1_ROOT" >&2
    fi
    command -v "$candidate"
    return
  done
  log "no Python here imports $engine: setting up $PR1_VENV"
  pr1_venv >&2
  imports "$PR1_VENV/bin/python" "$engine, perception_r1_verl" || { log "$PR1_VENV still lacks $engine or this package"; exit 1; }
  printf '%s\n' "$PR1_VENV/bin/python"
}

# preflight [hydra overrides...]: prepare the data, compose $TASK's config with the
# environment's overrides and the user's, run verl's validate_config, score CHECK_ROWS (4) rows
# per val file through the reward manager, print the launch command
# (perception_r1_verl.recipe). Sets OVERRIDES (the environment's overrides) and LAUNCH (1 with
# a CUDA GPU and DRY_RUN unset); exports what the launch needs (HF_HUB_OFFLINE). A PR1_PYTHON
# already set is used as it is.
preflight() {
  local plan status=0
  PR1_PYTHON="${PR1_PYTHON:-$(find_python)}"
  log "python: $PR1_PYTHON"
  plan="$(mktemp)"
  "$PR1_PYTHON" -m perception_r1_verl.recipe "$TASK" --config-dir "$RECIPE_CONFIG" --plan "$plan" \
    --rows "${CHECK_ROWS:-4}" "$@" || status=$?
  [[ $status -eq 0 ]] && source "$plan"
  rm -f "$plan"
  [[ $status -eq 0 ]] || exit "$status"
}
