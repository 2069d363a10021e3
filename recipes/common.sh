# Shared part of the Perception-R1 recipes; sourced by recipes/<task>.sh after it sets TASK.
#
# Finds (or, on a fresh machine, creates) a Python environment with verl and this package,
# then hands over to `python -m perception_r1_verl.recipe "$TASK" "$@"`, which prepares the
# data, checks the verl config and launches `python3 -m verl.trainer.main_ppo` on GPUs.
# Settings: see the README's "Training" section (MODEL_PATH, DATA_DIR, DATASET_ROOT,
# N_GPUS_PER_NODE, NNODES, EXPERIMENT_NAME, LOGGER, CURRICULUM, DRY_RUN, PYTHON).
set -euo pipefail

: "${TASK:?recipes/common.sh is sourced by a recipe that sets TASK}"
# pr1_venv (the project venv: torch pinned first on CPU, the gpu extra on CUDA) and pr1_has_cuda.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/env.sh"

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

run_recipe() {
  local python
  python="$(find_python)"
  log "python: $python"
  exec "$python" -m perception_r1_verl.recipe "$TASK" "$@"
}
