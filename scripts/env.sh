# Project-local Python environment, shared by scripts/test.sh and recipes/common.sh.
#
#   source scripts/env.sh; pr1_venv test,eval   # creates .venv if needed, installs .[test,eval]
#
# torch goes in first and pinned. On a CPU machine: the CPU build (a bare `torch`
# requirement, verl's, would pull several GB of CUDA wheels). On a CUDA machine: verl's pin,
# then `.[gpu]` (verl[vllm]: vLLM 0.24.0, transformers 5.9.0 at the same torch) and this
# package, then flash-attn without build isolation (its setup.py imports torch and fetches
# a prebuilt wheel when online). A flash-attn that does not install is one line: the
# recipes then train with sdpa attention (perception_r1_verl.recipe checks the import).
PR1_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PR1_VENV="${PR1_VENV:-$PR1_ROOT/.venv}"
PR1_TORCH="${PR1_TORCH:-torch==2.13.0}"
PR1_CUDA_TORCH="${PR1_CUDA_TORCH:-torch==2.11.0}"  # verl 0.9.1's vllm extra
PR1_FLASH_ATTN="${PR1_FLASH_ATTN-flash-attn==2.8.3}"  # its flash-attn-cu130torch211 extra; empty: skip
# flash-attn's build imports these itself when pip does not isolate it.
PR1_FLASH_ATTN_BUILD=(wheel packaging psutil ninja)

pr1_has_cuda() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; }

# flash-attn into the venv; on failure one line, and pip's output in a log.
pr1_flash_attn() {
  local python="$PR1_VENV/bin/python" log="$PR1_VENV/flash-attn-install.log"
  "$python" -c "import flash_attn" >/dev/null 2>&1 && return 0
  if [[ -z "$PR1_FLASH_ATTN" ]]; then
    echo "PR1_FLASH_ATTN is empty: flash-attn not installed; the recipes train with sdpa attention" >&2
  elif ! { "$@" "${PR1_FLASH_ATTN_BUILD[@]}" && "$@" --no-build-isolation "$PR1_FLASH_ATTN"; } >"$log" 2>&1; then
    echo "$PR1_FLASH_ATTN did not install (pip's output: $log); the recipes train with sdpa attention, no remove-padding" >&2
  fi
}

pr1_venv() {
  local extras="${1:-}" base="${PYTHON:-python3}"
  if [[ ! -x "$PR1_VENV/bin/python" ]]; then
    command -v "$base" >/dev/null 2>&1 || { echo "no $base: install Python 3.10-3.12 first" >&2; return 1; }
    "$base" -m venv "$PR1_VENV" || { echo "'$base -m venv' failed (Debian: apt-get install python3-venv)" >&2; return 1; }
  fi
  local pip=("$PR1_VENV/bin/python" -m pip install -q --disable-pip-version-check)
  if pr1_has_cuda; then
    "${pip[@]}" "$PR1_CUDA_TORCH" && "${pip[@]}" -e "$PR1_ROOT[gpu${extras:+,$extras}]" || return 1
    pr1_flash_attn "${pip[@]}"
    return 0
  fi
  if ! "$PR1_VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    "${pip[@]}" "$PR1_TORCH" || return 1
  fi
  "${pip[@]}" -e "$PR1_ROOT${extras:+[$extras]}"
}
