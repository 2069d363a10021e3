"""Fixtures shared by the test files, built once per session, without any model hub.

Helpers a test imports live beside this file: ``qwen_fixtures`` (Qwen-VL processor files),
``data_sources`` (real third-party data, converter options and command line),
``eval_fixtures`` (hand-made evaluation splits), ``recipe_fixtures`` (the recipes' config and launch command).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from qwen_fixtures import write_qwen2_5_vl_processor, write_tiny_qwen3_5


@pytest.fixture(autouse=True)
def _hub_offline_flag_kept():
    """Each test sees ``HF_HUB_OFFLINE`` as the session started: a recipe preflight that finds
    the hub unreachable sets it in its own process for the trainer it launches
    (``recipe.hub.load_tokenizer``), which in a test session would leak into later tests."""
    saved = os.environ.get("HF_HUB_OFFLINE")
    yield
    if saved is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = saved


@pytest.fixture(scope="session")
def qwen2_5_vl_processor_dir(tmp_path_factory) -> Path:
    """A Qwen2.5-VL processor folder, as ``--processor`` / ``AutoProcessor`` take it."""
    return write_qwen2_5_vl_processor(tmp_path_factory.mktemp("qwen2_5_vl_processor"))


@pytest.fixture(scope="session")
def qwen2_5_vl_processor(qwen2_5_vl_processor_dir):
    """The loaded processor (image-only where torchvision is missing)."""
    from perception_r1_verl.data.qwen_vl import load_processor

    return load_processor(qwen2_5_vl_processor_dir)


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl(tmp_path_factory) -> Path:
    """A random ~10M-parameter Qwen2.5-VL with a real processor, saved as a Hugging Face folder
    (tests copy it before changing anything)."""
    import torch
    from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    folder = write_qwen2_5_vl_processor(tmp_path_factory.mktemp("tiny_qwen2_5_vl"))
    tok = AutoTokenizer.from_pretrained(folder)
    ids = {
        t: tok.convert_tokens_to_ids(t)
        for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_end|>", "<|endoftext|>")
    }
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 2048,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 32,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_qwen3_5(tmp_path_factory) -> Path:
    """A random ~20M-parameter Qwen3.5 (Gated DeltaNet and full attention, 3:1) with a processor
    (tests copy it before changing anything)."""
    return write_tiny_qwen3_5(tmp_path_factory.mktemp("tiny_qwen3_5"))
