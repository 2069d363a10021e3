"""bench/estimate_memory.py: its parameter counts against the model cards, and the
directions every memory estimate must move in."""

from __future__ import annotations

import doctest
import importlib.util
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "bench" / "estimate_memory.py"
spec = importlib.util.spec_from_file_location("estimate_memory", PATH)
em = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = em  # dataclasses look their module up
spec.loader.exec_module(em)


def test_doctests():
    assert doctest.testmod(em).failed == 0


@pytest.mark.parametrize("name", sorted(em.PUBLISHED_PARAMS))
def test_parameter_counts_match_the_model_cards(name):
    assert em.MODELS[name].params() == pytest.approx(em.PUBLISHED_PARAMS[name], rel=0.005)


@pytest.mark.parametrize("name", [m.name for m in em.MODELS.values() if m.full_attention_interval])
def test_qwen3_5_counts_are_those_of_the_model_transformers_builds_from_its_config(name):
    """No exact published counts: transformers' Qwen3.5 built from the same config numbers
    (on the meta device) is the check, every parameter, the tower's apart."""
    import torch
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    m = em.MODELS[name]
    text = dict(hidden_size=m.hidden, num_hidden_layers=m.layers, intermediate_size=m.intermediate,
                num_attention_heads=m.heads, num_key_value_heads=m.kv_heads, head_dim=m.head_dim,
                vocab_size=m.vocab, linear_num_key_heads=m.linear_k_heads, linear_num_value_heads=m.linear_v_heads,
                linear_key_head_dim=m.linear_head_dim, linear_value_head_dim=m.linear_head_dim,
                full_attention_interval=m.full_attention_interval, tie_word_embeddings=m.tied)  # fmt: skip
    vision = dict(depth=m.vision_depth, hidden_size=m.vision_dim, intermediate_size=m.vision_mlp,
                  out_hidden_size=m.hidden, num_position_embeddings=m.vision_positions, patch_size=m.patch)  # fmt: skip
    config = Qwen3_5Config(text_config=text, vision_config=vision, tie_word_embeddings=m.tied)
    with torch.device("meta"):
        model = Qwen3_5ForConditionalGeneration(config)
    counts = {n: p.numel() for n, p in model.named_parameters()}
    assert sum(counts.values()) == m.params()
    assert sum(v for n, v in counts.items() if n.startswith("model.visual.")) == m.vision_params()
    assert m.attention_layers * m.full_attention_interval == m.layers  # 3 DeltaNet layers per attention layer


@pytest.mark.parametrize("name", sorted(em.MODELS))
def test_estimates_move_the_right_way(name):
    model = em.MODELS[name]
    full = em.phases(model, em.Setup(0, False, 1, 2, 4), 8, 2048)
    lora = em.phases(model, em.Setup(64, False, 1, 2, 4), 8, 2048)
    assert lora["update"] < full["update"] and lora["resident"] < full["resident"]
    assert em.phases(model, em.Setup(0, True, 1, 2, 4), 8, 2048)["resident"] == 0  # offloaded between phases
    bigger = em.phases(model, em.Setup(0, False, 1, 4, 4), 8, 2048)
    assert bigger["update"] > full["update"]  # a larger micro-batch costs activations
    shorter = em.phases(model, em.Setup(0, False, 1, 2, 4), 8, 768)
    assert shorter["update"] < full["update"] and shorter["kv_per_sequence"] < full["kv_per_sequence"]
    assert em.phases(model, em.Setup(0, False, 2, 2, 4), 8, 2048)["vllm_fixed"] < full["vllm_fixed"]
    assert em.phases(model, em.Setup(0, False, 1, 2, 4), 16, 2048)["update"] < full["update"]  # more shards


def test_every_table_row_fits_its_card():
    rows = em.table(gpus=8, response=2048, lora_rank=64)[2:]
    assert len(rows) == len(em.MODELS) * len(em.CARDS_GB)
    for model, row in zip([m for m in em.MODELS.values() for _ in em.CARDS_GB], rows, strict=True):
        assert row.startswith(f"| {model.name} |")
    for model in em.MODELS.values():
        for card in em.CARDS_GB:
            found = em.best(model, card, 8, 2048, 64)
            if found is None:  # the table says so: no candidate passes fit()
                assert any(r.startswith(f"| {model.name} | {card} GB | does not fit |") for r in rows)
                assert not any(em.fit(model, s, card, 8, 2048) for s in em.candidates(64, 8))
                continue
            setup, numbers = found
            assert max(numbers["update"], numbers["log_probs"]) <= em.MARGIN * card * 1e9
            assert numbers["resident"] + numbers["util"] * card * 1e9 <= card * 1e9
            assert numbers["concurrent"] >= em.MIN_CONCURRENT


def test_the_estimate_follows_the_recipes_config():
    """The settings the estimate assumes are the ones recipes/config/base.yaml trains with."""
    from omegaconf import OmegaConf

    base = OmegaConf.load(PATH.parents[1] / "recipes" / "config" / "base.yaml")
    rollout = base.actor_rollout_ref.rollout
    assert (em.PROMPT, em.TRAIN_BATCH) == (base.data.max_prompt_length, base.data.train_batch_size)
    assert (em.ROLLOUT_N, em.RECIPE_UTILIZATION) == (rollout.n, rollout.gpu_memory_utilization)


# Peaks measured on one H200 (2026-12-04): /work/shared/measurements/h200_actor_memory.jsonl,
# by that folder's measure_actor_memory.py, copied as is. Its first line says the setup:
# "world size 1, torch FSDP2 fully_shard per decoder layer, per vision block and the root;
# fp32 parameters, MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32); gradient
# checkpointing; AdamW (torch default, foreach)", 2048 prompt tokens holding one
# 1008x1008-pixel image + 2048 response tokens, sdpa attention; not measured: "verl's own
# FSDP engine, flash-attn and remove-padding, sharding over several GPUs, vLLM".
MEASURED = Path(__file__).parent / "data" / "h200_actor_memory.jsonl"


def measured_points() -> list[dict]:
    import json

    lines = MEASURED.read_text().splitlines()
    assert "torch.cuda.max_memory_allocated" in json.loads(lines[0])["what"]
    return [json.loads(line) for line in lines[1:]]


def estimated_peak(point: dict) -> float:
    """The estimate of a measured point (GiB), without the allowances: the update whole
    (fp32 weights, AdamW, world size 1); the setups the estimate does not model (the
    log-prob pass and 7B's optimizer-less backward held bf16 weights) from their measured
    resident state plus the estimated activations."""
    model, mb, seq = em.MODELS[point["model"]], point["mb"], point["seq"]
    p, base = model.params(), point["base_gib"] * em.GIB
    if point["mode"] == "update":
        return em.update_bytes(model, p, 12 * p, mb, seq, 1) / em.GIB
    if point["mode"] == "activations_only":  # bf16 gradients
        return (base + em.backward_bytes(model, 2 * p, mb, seq)) / em.GIB
    return (base + em.activation_bytes(model, mb, seq, False)) / em.GIB


@pytest.mark.parametrize("point", measured_points(), ids=lambda p: f"{p['model']}-{p['mode']}-mb{p['mb']}")
def test_the_estimate_is_never_below_a_measured_peak_nor_15_percent_above(point):
    assert point["seq"] == em.PROMPT + 2048 and point["image_tokens"] <= em.IMAGE_PATCHES // 4 * 1.02
    ratio = estimated_peak(point) / point["peak_alloc_gib"]
    assert 1.0 <= ratio <= 1.15, f"estimate {estimated_peak(point):.2f} GiB vs measured {point['peak_alloc_gib']}"
