# Shared part of the Perception-R1 recipes; sourced by recipes/<task>.sh after it sets TASK.
#
# Finds (or, on a fresh machine, creates) a Python environment with verl and this package,
# then hands over to `python -m perception_r1_verl.recipe "$TASK" "$@"`, which prepares the
# data, checks the verl config and launches `python3 -m verl.trainer.main_ppo` on GPUs.
# Settings: see the README's "Training" section (MODEL_PATH, DATA_DIR, DATASET_ROOT,
# N_GPUS_PER_NODE, NNODES, EXPERIMENT_NAME, LOGGER, CURRICULUM, DRY_RUN, PYTHON).
set -euo pipefail

: "${TASK:?recipes/common.sh is sourced by a recipe that sets TASK}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv"
# CPU-only torch (the PyPI default pulls gigabytes of CUDA wheels); torch==2.13.0 is the
# version verl 0.9.1 is tested with here.
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCH_CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"

log() { printf '[%s] %s\n' "$TASK" "$*" >&2; }

has_cuda_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; }

# True when "$1" imports verl, this package and (on a GPU machine) vLLM.
python_ready() {
  local python="$1" modules="verl, perception_r1_verl"
  has_cuda_gpu && modules="$modules, vllm"
  command -v "$python" >/dev/null 2>&1 && "$python" -c "import $modules" >/dev/null 2>&1
}

# Create $VENV and install this package into it (torch first, CPU build, without a GPU).
create_venv() {
  local base="${PYTHON:-python3}"
  command -v "$base" >/dev/null 2>&1 || { log "no $base found: install Python 3.10-3.12 first"; exit 1; }
  log "creating $VENV (verl is not importable here)"
  "$base" -m venv "$VENV" || { log "'$base -m venv' failed: install the venv module (Debian: apt-get install python3-venv)"; exit 1; }
  "$VENV/bin/python" -m pip install --upgrade pip
  if has_cuda_gpu; then
    "$VENV/bin/python" -m pip install -e "$REPO_ROOT[gpu]"
  else
    "$VENV/bin/python" -m pip install "torch==$TORCH_VERSION" --index-url "$TORCH_CPU_INDEX"
    "$VENV/bin/python" -m pip install -e "$REPO_ROOT"
  fi
}

# The interpreter to run: $PYTHON or python3 when they already have verl (used as is),
# else the project venv, created on first use.
find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3 "$VENV/bin/python"; do
    if [[ -n "$candidate" ]] && python_ready "$candidate"; then
      command -v "$candidate"
      return
    fi
  done
  [[ -x "$VENV/bin/python" ]] || create_venv >&2
  python_ready "$VENV/bin/python" || { log "$VENV lacks verl or this package: remove it and rerun"; exit 1; }
  printf '%s\n' "$VENV/bin/python"
}

run_recipe() {
  local python
  python="$(find_python)"
  log "python: $python"
  exec "$python" -m perception_r1_verl.recipe "$TASK" "$@"
}
