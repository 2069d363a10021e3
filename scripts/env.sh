# Project-local Python environment, shared by scripts/test.sh and recipes/common.sh.
#
#   source scripts/env.sh; pr1_venv test,eval   # creates .venv if needed, installs .[test,eval]
#
# torch goes in first and pinned: a bare `torch` requirement (verl's) would otherwise pull
# several GB of CUDA wheels on a CPU machine. On a CUDA machine the `gpu` extra brings
# verl's own vLLM/flash-attn pins instead.
PR1_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PR1_VENV="${PR1_VENV:-$PR1_ROOT/.venv}"
PR1_TORCH="${PR1_TORCH:-torch==2.13.0}"

pr1_has_cuda() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; }

pr1_venv() {
  local extras="${1:-}" base="${PYTHON:-python3}"
  if [[ ! -x "$PR1_VENV/bin/python" ]]; then
    command -v "$base" >/dev/null 2>&1 || { echo "no $base: install Python 3.10-3.12 first" >&2; return 1; }
    "$base" -m venv "$PR1_VENV" || { echo "'$base -m venv' failed (Debian: apt-get install python3-venv)" >&2; return 1; }
  fi
  local pip=("$PR1_VENV/bin/python" -m pip install -q --disable-pip-version-check)
  if pr1_has_cuda; then
    extras="gpu${extras:+,$extras}"
  elif ! "$PR1_VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    "${pip[@]}" "$PR1_TORCH"
  fi
  "${pip[@]}" -e "$PR1_ROOT${extras:+[$extras]}"
}
