"""Qwen3.5 (issue 17), the fourth family: the recipes for ``MODEL_PATH=Qwen/Qwen3.5-2B`` (rows
in its frame, the reward check, a launch verl validates), its answers read with and without
a think block its template opened, and a tiny random Qwen3.5 built from a config
(``qwen_fixtures.write_tiny_qwen3_5``): evaluation on it, and the actor's forward and backward
through verl 0.9.1's monkey patch against plain transformers, padded and packed, with the
recipe guard that keeps it padded where the packed path leaks.

Only a GPU run can show the rest: vLLM serving Qwen3.5 for the rollouts (from vLLM 0.17; its
CPU backend lacks the linear-attention kernels), fla's kernels on the packed path (they need
CUDA; with them transformers honours cu_seqlens and the recipes keep use_remove_padding), and
the real checkpoint's tokenizer, template and answer frame.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch
from recipe_fixtures import CONFIG, RECIPES, launch_overrides

from perception_r1_verl import rewards
from perception_r1_verl.data.qwen_vl import load_processor
from perception_r1_verl.eval import cli as eval_cli
from perception_r1_verl.eval.generate import prepare
from perception_r1_verl.recipe import main as recipe_main
from perception_r1_verl.recipe import overrides as recipe_overrides
from perception_r1_verl.recipe.config import compose, validate
from perception_r1_verl.recipe.settings import Settings, linear_attention_kernels_error
from perception_r1_verl.recipe.tasks import TASKS

MODEL = "Qwen/Qwen3.5-2B"
# The recipe's environment for a quick run on the offline sample (the hub is not asked).
QUICK = {"HF_HUB_OFFLINE": "1", "TRAIN_LIMIT": "8", "VAL_LIMIT": "4", "DRY_RUN": "1", "CHECK_ROWS": "2"}


def _val_rows(data_dir, task: str) -> list[dict]:
    return pq.read_table(data_dir / task / "sample" / "val.parquet").to_pylist()


def _check_launch(stdout: str, task: str, think: bool = False) -> list[str]:
    """The printed launch: Qwen3.5's settings in it, verl's validate_config passing on it."""
    overrides = launch_overrides(stdout, task)
    assert "data.image_patch_size=16" in overrides
    assert f"+data.apply_chat_template_kwargs.enable_thinking={think}" in overrides
    assert "actor_rollout_ref.model.use_remove_padding=False" in overrides  # no fla here
    assert "[validate_config] All configuration checks passed" in stdout
    validate(compose(CONFIG, task, overrides))
    return overrides


def _check_rows(rows: list[dict], think: bool = False) -> None:
    for row in rows:
        info, gt = row["extra_info"], json.loads(row["reward_model"]["ground_truth"])
        assert info["model_family"] == "qwen3_5" and info["think"] is think
        assert all(v % 32 == 0 for v in info["input_size"])  # resize factor 32 (patch 16 x merge 2)
        assert info["input_size"][0] * info["input_size"][1] >= 65536  # the processor's minimum
        assert gt.get("frame", [1000, 1000]) == [1000, 1000]  # 0-1000, as Qwen3-VL (OCR has no frame)
        assert ("JSON" in row["prompt"][0]["content"]) == (info["task"] in ("grounding", "counting"))


def test_the_shell_recipe_for_qwen3_5(tmp_path):
    """``MODEL_PATH=Qwen/Qwen3.5-2B bash recipes/refcoco.sh`` on a machine without GPU or hub."""
    env = {**os.environ, **QUICK, "MODEL_PATH": MODEL, "DATA_DIR": str(tmp_path), "PYTHON": sys.executable}
    env.pop("DRY_RUN")  # the CPU machine stops before the launch by itself
    out = subprocess.run(
        ["bash", str(RECIPES / "refcoco.sh")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "--model-family qwen3_5" in out.stdout
    assert "use_remove_padding=False, since verl's packed path would leak their state" in out.stdout
    assert out.stdout.count("reference score=2.000") == 2 and "training needs GPUs" in out.stdout
    _check_launch(out.stdout, "refcoco")
    _check_rows(_val_rows(tmp_path, "refcoco"))


@pytest.mark.parametrize(("task", "think"), [("pixmo_count", False), ("page_ocr", False), ("coco_det", True)])
def test_the_other_recipes_for_qwen3_5(task, think, tmp_path, monkeypatch, capsys):
    """The preflight of each other recipe; THINK=1 on one: rows ask for think and answer tags,
    the template is told enable_thinking=True, and the reference answers still score the maximum."""
    env = {**QUICK, "MODEL_PATH": MODEL, "DATA_DIR": str(tmp_path), "THINK": "1" if think else ""}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(recipe_main, "cuda_gpu_count", lambda: 0)
    assert recipe_main.main([task, "--rows", "2", "--config-dir", str(CONFIG)]) == 0
    stdout = capsys.readouterr().out
    best = rewards.max_score(TASKS[task].reward_task)
    assert stdout.count(f"reference score={best:.3f}") == 2, stdout
    overrides = _check_launch(stdout, task, think)
    assert (f"trainer.experiment_name={task}_Qwen3.5-2B" + ("_think" if think else "")) in overrides
    _check_rows(_val_rows(tmp_path, task), think)


def test_rows_prepared_without_thinking_are_refused_for_a_thinking_run(tmp_path, monkeypatch):
    for name, value in {**QUICK, "MODEL_PATH": MODEL, "DATA_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env(TASKS["page_ocr"], gpus=0)
    recipe_main.prepare_data(TASKS["page_ocr"], settings)
    monkeypatch.setenv("THINK", "1")
    with pytest.raises(SystemExit, match="was prepared for qwen3_5, the run is qwen3_5 with thinking"):
        recipe_main.prepare_data(TASKS["page_ocr"], Settings.from_env(TASKS["page_ocr"], gpus=0))


# ---------------------------------------------------------------- answers inside a template-opened think block

GROUND_TRUTH = {
    "grounding": {"bbox_2d": [100, 200, 400, 600], "frame": [1000, 1000]},
    "counting": {"points": [[100, 100], [500, 500]], "count": 2, "frame": [1000, 1000]},
    "detection": {"objects": [{"bbox_2d": [10, 20, 300, 400], "label": "dog"}], "frame": [1000, 1000],
                  "categories": ["dog"]},
    "ocr": {"text": "Hello world"},
}  # fmt: skip


@pytest.mark.parametrize("task", sorted(GROUND_TRUTH))
@pytest.mark.parametrize("think", [False, True])
def test_exact_answers_score_the_maximum_as_written_after_a_template_opened_think_block(task, think):
    """Qwen3.5 4B+ left to its template, or told to think: the prompt ends in ``<think>\n`` and
    the response in ``reasoning</think>\n\n`` + the answer. The exact answer scores the maximum
    in both forms; with thinking asked, an answer with no think block at all scores no format."""
    gt = GROUND_TRUTH[task]
    info = {"task": task, "model_family": "qwen3_5", "think": think}
    best = rewards.max_score(task)
    exact = rewards.render_answer(task, gt, "qwen3_5", think=think)
    assert rewards.compute_score("pr1", exact, json.dumps(gt), info)["score"] == pytest.approx(best)
    body = exact.split("</think>", 1)[1] if think else exact
    opened = "I look at the image.\n</think>\n\n" + body.lstrip("\n")
    assert rewards.compute_score("pr1", opened, json.dumps(gt), info)["score"] == pytest.approx(best)
    if think:
        untagged = rewards.render_answer(task, gt, "qwen3_5")
        assert rewards.compute_score("pr1", untagged, json.dumps(gt), info)["format"] == 0.0


# ---------------------------------------------------------------- evaluation on a tiny Qwen3.5


@pytest.fixture(scope="module")
def tiny_val(tiny_qwen3_5, tmp_path_factory):
    """The refcoco recipe's val parquet for the tiny model (its family read from its config.json)."""
    env = {"DATA_DIR": str(tmp_path_factory.mktemp("data")), "MODEL_PATH": str(tiny_qwen3_5),
           "TRAIN_LIMIT": "2", "VAL_LIMIT": "3"}  # fmt: skip
    settings = Settings.from_env(TASKS["refcoco"], env=env, gpus=0)
    assert settings.model_family == "qwen3_5"
    recipe_main.prepare_data(TASKS["refcoco"], settings)
    return settings.parquet("val")


def test_eval_prompts_tell_the_template_whether_to_think(tiny_qwen3_5, tiny_val):
    """generate renders what verl renders with the recipes' apply_chat_template_kwargs."""
    processor = load_processor(tiny_qwen3_5)
    row = pq.read_table(tiny_val).to_pylist()[0]
    text, images = prepare(row["prompt"], row["images"], row["extra_info"], processor, 32)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # enable_thinking=False
    assert [list(im.size) for im in images] == [row["extra_info"]["input_size"]]
    thinking = dict(row["extra_info"], think=True)
    assert prepare(row["prompt"], row["images"], thinking, processor, 32)[0].endswith("assistant\n<think>\n")


def test_generate_and_score_run_on_a_tiny_qwen3_5(tiny_qwen3_5, tiny_val, tmp_path, capsys):
    """``perception-r1-eval generate --backend transformers`` then ``score`` on the model's rows;
    then ``score`` of the exact answers, written after a template-opened think block: 100%."""
    data = tiny_val
    responses, out = tmp_path / "responses.jsonl", tmp_path / "eval"
    command = f"generate --model {tiny_qwen3_5} --data {data} --out {responses} --backend transformers --max-new-tokens 6 --device cpu"
    assert eval_cli.main(shlex.split(command)) == 0
    assert "3 generated (transformers)" in capsys.readouterr().out
    assert eval_cli.main(["score", "--data", str(data), "--responses", str(responses), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_samples"] == 3 and metrics["n_missing"] == 0
    exact = tmp_path / "exact.jsonl"
    lines = []
    for row in pq.read_table(data).to_pylist():
        gt = json.loads(row["reward_model"]["ground_truth"])
        answer = rewards.render_answer("grounding", gt, "qwen3_5")
        lines.append(json.dumps({"index": row["extra_info"]["index"], "response": "Hmm.</think>\n\n" + answer}))
    exact.write_text("\n".join(lines) + "\n")
    assert eval_cli.main(["score", "--data", str(data), "--responses", str(exact), "--out", str(tmp_path / "e")]) == 0
    exact_metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert exact_metrics["n_unparsable"] == 0 and exact_metrics["Acc@0.95"] == exact_metrics["mIoU"] == 1.0


LENGTHS = (70, 90)  # over the torch fallback's 64-token chunk: the recurrence crosses chunks too


def _sequences() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(0, 150000, (n,), generator=generator) for n in LENGTHS]


def _token_log_probs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p(token t+1 | ..t) of each position but the last, as verl's actor takes them."""
    return torch.log_softmax(logits[:-1].float(), -1).gather(-1, ids[1:, None])[:, 0]


def _reference(model, sequences):
    """Plain transformers, one sequence at a time: per-sequence log-probs and the loss's gradients."""
    model.zero_grad()
    out = [_token_log_probs(model(input_ids=ids[None], use_cache=False).logits[0], ids) for ids in sequences]
    sum(lp.sum() for lp in out).backward()
    return [lp.detach() for lp in out], _grads(model)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _padded(model, sequences):
    """verl's use_remove_padding=False path: right-padded rows and their attention mask."""
    width = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(sequences):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    model.zero_grad()
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
    out = [_token_log_probs(logits[i, : len(s)], s) for i, s in enumerate(sequences)]
    sum(lp.sum() for lp in out).backward()
    return [lp.detach() for lp in out], _grads(model)


def _packed(model, sequences):
    """verl's use_remove_padding=True path (workers/engine/fsdp/transformer_impl.py): one row,
    positions restarting per sequence, attention_mask None, and cu_seqlens for the patched
    Gated DeltaNet forward (the engine passes them when the model's forward takes them)."""
    ids = torch.cat(sequences)[None]
    positions = torch.cat([torch.arange(len(s)) for s in sequences])[None]
    cu_seqlens = torch.tensor([0, *torch.tensor([len(s) for s in sequences]).cumsum(0).tolist()])
    with torch.no_grad():
        logits = model(
            input_ids=ids,
            attention_mask=None,
            position_ids=positions,
            cu_seqlens=cu_seqlens,
            cu_seqlens_cpu=cu_seqlens,
            use_cache=False,
        ).logits[0]
    return [_token_log_probs(part, s) for part, s in zip(logits.split(list(LENGTHS)), sequences, strict=True)]


@pytest.fixture(scope="module")
def verl_patched(tiny_qwen3_5):
    """The tiny model and its plain-transformers results, then verl's monkey patch applied as the
    FSDP engine applies it; the patched class attributes are put back after this module."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield _patched(tiny_qwen3_5, monkeypatch)


def _patched(tiny_qwen3_5, monkeypatch):
    from transformers import AutoModelForImageTextToText
    from transformers.models.qwen3_5 import modeling_qwen3_5 as m
    from transformers.models.qwen3_5_moe import modeling_qwen3_5_moe as moe
    from verl.models.transformers.monkey_patch import apply_monkey_patch

    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen3_5, dtype=torch.float32)
    assert model.model.language_model.layers[0].linear_attn.chunk_gated_delta_rule is m.torch_chunk_gated_delta_rule
    # Slow decay (g = -exp(A_log) * softplus(...)): the random init forgets within a few tokens,
    # a trained model's long-memory heads do not; with exp(-4) the state spans a sequence.
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            if layer.layer_type == "linear_attention":
                layer.linear_attn.A_log.fill_(-4.0)
    sequences = _sequences()
    reference = _reference(model, sequences)
    for module, prefix in ((m, "Qwen3_5"), (moe, "Qwen3_5Moe")):
        for name, attr in (("ForConditionalGeneration", "forward"), ("Model", "forward"), ("DecoderLayer", "forward"),
                           ("GatedDeltaNet", "forward"), ("VisionModel", "fast_pos_embed_interpolate")):  # fmt: skip
            cls = getattr(module, prefix + name)
            monkeypatch.setattr(cls, attr, getattr(cls, attr))  # restored at teardown
    from transformers.integrations import flash_attention  # also swapped for its Ulysses version

    for target in (flash_attention, m):
        if hasattr(target, "_flash_attention_forward"):
            monkeypatch.setattr(target, "_flash_attention_forward", target._flash_attention_forward)
    apply_monkey_patch(model, use_remove_padding=True)
    assert m.Qwen3_5GatedDeltaNet.forward.__module__ == "verl.models.transformers.qwen3_5"
    return model, sequences, reference


def test_verls_padded_actor_pass_agrees_with_transformers(verl_patched):
    """What the recipes train with here (use_remove_padding=False): log-probs and gradients as
    plain transformers computes them, sequence by sequence."""
    model, sequences, (ref_lp, ref_grads) = verl_patched
    log_probs, grads = _padded(model, sequences)
    for got, want in zip(log_probs, ref_lp, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # verl runs the vision tower on a dummy image for text-only rows (0 x its output), so the
    # tower gets zero gradients where transformers gives it none.
    assert grads.keys() - ref_grads.keys() == {n for n in grads if n.startswith("model.visual.")}
    for name, grad in grads.items():
        want = ref_grads.get(name, torch.zeros_like(grad))
        torch.testing.assert_close(grad, want, atol=1e-5, rtol=1e-4, msg=name)


def test_verls_packed_path_leaks_state_into_the_next_sequence_without_fla(verl_patched):
    """use_remove_padding=True without fla: the first packed sequence is right, the second
    starts from the first one's recurrent state (transformers' torch fallback takes cu_seqlens
    in **kwargs and ignores them), so its log-probs are off: why the recipes turn packing off."""
    model, sequences, (ref_lp, _) = verl_patched
    first, second = _packed(model, sequences)
    torch.testing.assert_close(first, ref_lp[0], atol=1e-5, rtol=1e-5)
    assert (second - ref_lp[1]).abs().max() > 1e-2  # measured 0.046 (log-probs' spread: 0.13)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_the_recipe_packs_qwen3_5_only_where_transformers_uses_fla(task, tmp_path, monkeypatch):
    env = {"DATA_DIR": str(tmp_path), "MODEL_PATH": "Qwen/Qwen3.5-2B"}
    assert linear_attention_kernels_error() is not None  # this machine: no fla, no CUDA
    without = Settings.from_env(TASKS[task], env=env, gpus=0)
    assert not without.packed_ok
    assert "actor_rollout_ref.model.use_remove_padding=False" in recipe_overrides.env_overrides(TASKS[task], without)
    monkeypatch.setattr("perception_r1_verl.recipe.settings.linear_attention_kernels_error", lambda: None)
    with_fla = Settings.from_env(TASKS[task], env=env, gpus=0)
    assert with_fla.packed_ok
    assert not any("use_remove_padding" in o for o in recipe_overrides.env_overrides(TASKS[task], with_fla))
