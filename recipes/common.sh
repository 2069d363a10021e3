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

# True when "$1" imports verl, this package and, on a CUDA machine, vLLM.
python_ready() {
  local python="$1" modules="verl, perception_r1_verl"
  pr1_has_cuda && modules="$modules, vllm"
  command -v "$python" >/dev/null 2>&1 && "$python" -c "import $modules" >/dev/null 2>&1
}

# The interpreter to run: $PYTHON or python3 when they already have verl (used as is), else
# the project venv, created and installed on first use.
find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3 "$PR1_VENV/bin/python"; do
    if [[ -n "$candidate" ]] && python_ready "$candidate"; then
      command -v "$candidate"
      return
    fi
  done
  log "verl is not importable here: setting up $PR1_VENV"
  pr1_venv >&2
  python_ready "$PR1_VENV/bin/python" || { log "$PR1_VENV still lacks verl or this package"; exit 1; }
  printf '%s\n' "$PR1_VENV/bin/python"
}

run_recipe() {
  local python
  python="$(find_python)"
  log "python: $python"
  exec "$python" -m perception_r1_verl.recipe "$TASK" "$@"
}
