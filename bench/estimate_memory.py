"""ESTIMATE of GPU memory per card for the recipes, and the settings that fit.

The table it prints is docs/training.md#memory-per-card-an-estimate.

It is arithmetic on each model's published config.json (values below) and on how verl
0.9.1 lays out one colocated FSDP + vLLM worker per GPU, calibrated at world size 1
against peaks measured on one H200 (tests/data/h200_actor_memory.jsonl: the three models
at 2048 + 2048 tokens, micro-batches 1-8; tests/test_estimate_memory.py holds the estimate
within 0-15 % above every point). Sharding over 8 GPUs, flash-attn and remove-padding,
and vLLM's share are not measured. The phases take turns on the card, so the peak is the
largest of:

- **actor update** (vLLM asleep, its weights and KV cache released): the FSDP shards of
  the fp32 master weights (verl loads the actor in fp32, ``model_dtype``) and AdamW's two
  fp32 moments of the trained parameters, all divided over the GPUs; the bf16 copy of the
  FSDP units being gathered (the root unit: embeddings, head, vision merger; plus two
  decoder layers, one prefetched); then the larger of backward (its start: the activations
  of one micro-batch with gradient checkpointing and the logits' gradient; its end: the
  fp32 gradients) and AdamW's step (the gradients and one more fp32 copy of the trained
  parameters, measured: at micro-batches 1-4 this is the peak); a fixed allowance for the
  CUDA context, NCCL and fragmentation. verl's ``param_offload`` / ``optimizer_offload``
  for the actor move the shards to CPU *between* phases (verl turns FSDP's CPU offload off
  for the actor), so they do not lower this peak;
- **log-probs** (old policy and reference): forward only, the log-prob micro-batch;
- **rollout**: vLLM's ``gpu_memory_utilization`` share of the card (bf16 weights, the KV
  cache for this GPU's share of the step's responses, a reserve for its own activations
  and CUDA graphs), beside whatever the actor keeps on the card (its parameter and
  optimizer shards, unless offloaded).

Qwen3.5-2B/4B/9B use the same terms, uncalibrated (no Qwen3.5 peak has been measured): its
text model's Gated DeltaNet layers (three of four) hold no KV cache, and vLLM keeps a fixed
state per sequence in them (``state_bytes_per_sequence``).

Activations per token (bf16): checkpointed layer inputs ``L x h``; one decoder layer
recomputed during backward, about ``8h + 4i`` values; the vision tower, the same terms for
each of the image's 4 x 1276 patches (images are at most 1M pixels: 1276 merged tokens);
and the logits, ``V`` values a token: 5.2 bytes each while training plus two fp32 chunks
of the log-prob (1024 tokens each), 1.75 more at backward's start, 6 in forward only
(bf16 logits and the entropy's softmax), fitted to the measurements. Sequences are
counted at their longest (2048 prompt + the task's response), so the estimate is for the
worst step, not the average one.

Run: ``python bench/estimate_memory.py [--gpus 8] [--response 2048] [--lora-rank 64]``;
prints the per-phase breakdown for every model x card x setting tried, then the table of
the first setting that fits each card (fastest first: full fine-tuning before LoRA, no
offload before offload, one vLLM engine per GPU before TP 2, then the largest micro-batch).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

GIB = 1024**3
CARDS_GB = (24, 48, 80)
PROMPT = 2048  # data.max_prompt_length
IMAGE_PATCHES = 4 * 1276  # 1M pixels / 28^2 merged tokens, 2 x 2 patches each
# Recipe settings the estimate follows (recipes/config/base.yaml).
TRAIN_BATCH = 32
ROLLOUT_N = 8
# Allowances (estimates): CUDA context + NCCL + allocator fragmentation; vLLM's own
# activations, sampler and CUDA graphs; the context of the second process while the other
# phase runs.
OVERHEAD_GIB = 3.0
VLLM_RESERVE_GIB = 2.0
CONTEXT_GIB = 1.5
# A phase may use this share of the card: room for what the estimate misses.
MARGIN = 0.9
RECIPE_UTILIZATION = 0.6  # rollout.gpu_memory_utilization in the recipes
# The smallest useful KV cache: one prompt's 8 rollouts at full length at once.
MIN_CONCURRENT = ROLLOUT_N
# Logits, bytes a token, fitted to the H200 measurements at 2048 + 2048 tokens: training
# (bf16 logits and what the log-prob's backward keeps of them), forward only (bf16 logits and
# the entropy's softmax); the log-prob's fp32 chunk (tokens).
LOGIT_BYTES_TRAIN = 5.2
LOGIT_BYTES_FORWARD = 6
LOGPROB_CHUNK = 1024
LOGIT_GRAD_BYTES = 1.75  # backward's first peak over the forward's, a token


@dataclass(frozen=True)
class Model:
    """The config.json numbers that size a Qwen-VL model (``vision_mlp``: the MLP width)."""

    name: str
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    vision_dim: int
    vision_depth: int
    vision_mlp: int
    vision_gated: bool  # SwiGLU (gate, up, down) in Qwen2.5-VL's tower, fc1/fc2 in Qwen2-VL's
    patch: int = 14
    temporal_patch: int = 2
    merge: int = 2
    explicit_head_dim: int = 0  # config head_dim (Qwen3.5: 256); 0: hidden / heads
    # Qwen3.5's text model: every ``full_attention_interval``-th layer is (gated) attention, the
    # others Gated DeltaNet with these heads (0: attention only); no qkv bias, q/k RMSNorms,
    # a learned position embedding of ``vision_positions`` in the tower.
    full_attention_interval: int = 0
    linear_k_heads: int = 0
    linear_v_heads: int = 0
    linear_head_dim: int = 0
    vision_positions: int = 0

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.hidden // self.heads

    @property
    def attention_layers(self) -> int:
        """Layers that attend (and hold a KV cache); the rest are Gated DeltaNet."""
        return self.layers // self.full_attention_interval if self.full_attention_interval else self.layers

    def llm_linears(self) -> list[tuple[int, int]]:
        """(in, out) of an attention layer's linear layers: q, k, v, o, gate, up, down (Qwen3.5's
        q also writes the attention's output gate: twice the width)."""
        h, hd, i = self.hidden, self.head_dim, self.intermediate
        q, kv = self.heads * hd, self.kv_heads * hd
        return [(h, q * (2 if self.full_attention_interval else 1)), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    def linear_attention_linears(self) -> list[tuple[int, int]]:
        """A Gated DeltaNet layer's: in_proj_qkv, in_proj_z, in_proj_b, in_proj_a, out_proj, then the MLP."""
        h, i = self.hidden, self.intermediate
        k, v = self.linear_k_heads * self.linear_head_dim, self.linear_v_heads * self.linear_head_dim
        heads = self.linear_v_heads
        return [(h, 2 * k + v), (h, v), (h, heads), (h, heads), (v, h), (h, i), (h, i), (i, h)]

    def layer_linears(self) -> list[list[tuple[int, int]]]:
        """Each decoder layer's linear layers, in order (transformers' default layer_types)."""
        every = self.full_attention_interval
        return [
            self.llm_linears() if not every or (n + 1) % every == 0 else self.linear_attention_linears()
            for n in range(self.layers)
        ]

    def llm_params(self) -> int:
        h = self.hidden
        linears = sum(a * b for layer in self.layer_linears() for a, b in layer)
        if not self.full_attention_interval:  # Qwen2 attention: q, k, v biases
            extras = self.layers * (h + 2 * self.kv_heads * self.head_dim)
        else:  # q/k RMSNorms; DeltaNet's depthwise conv (kernel 4), A_log, dt_bias, gated RMSNorm
            conv = (2 * self.linear_k_heads + self.linear_v_heads) * self.linear_head_dim * 4
            extras = self.attention_layers * 2 * self.head_dim
            extras += (self.layers - self.attention_layers) * (conv + 2 * self.linear_v_heads + self.linear_head_dim)
        norms = self.layers * 2 * h  # two RMSNorms a layer
        return linears + extras + norms + self.vocab * h * (1 if self.tied else 2) + h

    def vision_params(self) -> int:
        d, m = self.vision_dim, self.vision_mlp
        attn = d * 3 * d + 3 * d + d * d + d
        mlp = 3 * d * m + 2 * m + d if self.vision_gated else 2 * d * m + m + d
        norms = 2 * d if self.vision_gated else 4 * d  # RMSNorm, or LayerNorm with bias
        merged = d * self.merge**2
        merger = merged * merged + merged + merged * self.hidden + self.hidden + (d if self.vision_gated else 2 * d)
        patch_embed = 3 * self.temporal_patch * self.patch**2 * d + (d if self.vision_positions else 0)  # + bias
        return self.vision_depth * (attn + mlp + norms) + merger + patch_embed + self.vision_positions * d

    def params(self) -> int:
        return self.llm_params() + self.vision_params()

    def lora_params(self, rank: int) -> int:
        """Adapter parameters of PEFT's all-linear on the language model (the recipes' LoRA)."""
        return sum(rank * (a + b) for layer in self.layer_linears() for a, b in layer)

    def root_params(self) -> int:
        """Parameters outside the decoder layers and vision blocks (FSDP's root unit)."""
        d = self.vision_dim * self.merge**2
        return self.vocab * self.hidden * (1 if self.tied else 2) + d * d + d * self.hidden

    def kv_bytes_per_token(self) -> int:
        return 2 * self.attention_layers * self.kv_heads * self.head_dim * 2  # K and V, bf16

    def state_bytes_per_sequence(self) -> int:
        """vLLM's fixed state of one sequence in the Gated DeltaNet layers, whatever its length:
        the recurrent state (v heads x key dim x value dim, fp32: config mamba_ssm_dtype) and
        the convolution's last 3 inputs (bf16)."""
        linear = self.layers - self.attention_layers
        recurrent = self.linear_v_heads * self.linear_head_dim**2 * 4
        conv = (2 * self.linear_k_heads + self.linear_v_heads) * self.linear_head_dim * 3 * 2
        return linear * (recurrent + conv)


# Qwen3.5 (text_config / vision_config of config.json; full_attention_interval 4, head_dim
# 256, vocabulary 248320, Gated DeltaNet 16 QK heads of 128): hidden, layers, intermediate,
# attention heads, KV heads, tied embeddings, DeltaNet V heads, vision (depth, width, MLP).
# Sources: the model cards' "Model Overview" (2B: 2048/24/6144, 8 Q 2 KV, DeltaNet 16 V;
# 9B: 4096/32/12288, 16 Q 4 KV, DeltaNet 32 V, a separate LM output), a Qwen3.5-4B-derived
# config.json (2560/32/9216, 16 Q 4 KV, tied, vision 24/1024/4096, 2304 positions) and a
# GGUF inspection of Qwen3.5-4B (DeltaNet 32 V heads; quantumaikr/quant.cpp issue 94). The
# 2B's tower is taken as the 4B's and the 9B's as Qwen3-VL-8B's (27/1152/4304); the
# transformers model built from each config is the check (tests/test_estimate_memory.py).
QWEN3_5 = (
    ("Qwen3.5-2B", 2048, 24, 6144, 8, 2, True, 16, (1024, 24, 4096)),
    ("Qwen3.5-4B", 2560, 32, 9216, 16, 4, True, 32, (1024, 24, 4096)),
    ("Qwen3.5-9B", 4096, 32, 12288, 16, 4, False, 32, (1152, 27, 4304)),
)
# Source: each model card's config.json on huggingface.co (Qwen/<name>/blob/main/config.json):
# hidden_size, num_hidden_layers, intermediate_size, num_attention_heads,
# num_key_value_heads, vocab_size, tie_word_embeddings; vision_config depth and width
# (Qwen2-VL: embed_dim 1280, mlp_ratio 4; Qwen2.5-VL: hidden_size 1280, intermediate_size 3420).
MODELS = {
    model.name: model
    for model in (
        Model("Qwen2-VL-2B-Instruct", 1536, 28, 8960, 12, 2, 151936, True, 1280, 32, 5120, False),
        Model("Qwen2.5-VL-3B-Instruct", 2048, 36, 11008, 16, 2, 151936, True, 1280, 32, 3420, True),
        Model("Qwen2.5-VL-7B-Instruct", 3584, 28, 18944, 28, 4, 152064, False, 1280, 32, 3420, True),
        *(
            Model(
                name,
                hidden,
                layers,
                inter,
                heads,
                kv,
                248320,
                tied,
                *vision,
                False,
                16,
                explicit_head_dim=256,
                full_attention_interval=4,
                linear_k_heads=16,
                linear_v_heads=v_heads,
                linear_head_dim=128,
                vision_positions=2304,
            )  # fmt: skip
            for name, hidden, layers, inter, heads, kv, tied, v_heads, vision in QWEN3_5
        ),
    )
}
# The sizes the model cards give (parameters), to check the counts above against.
PUBLISHED_PARAMS = {"Qwen2-VL-2B-Instruct": 2.21e9, "Qwen2.5-VL-3B-Instruct": 3.75e9, "Qwen2.5-VL-7B-Instruct": 8.29e9}


@dataclass(frozen=True)
class Setup:
    lora_rank: int  # 0: full fine-tuning
    offload: bool  # actor param_offload + optimizer_offload (between phases)
    tp: int  # rollout.tensor_model_parallel_size
    micro_batch: int  # actor.ppo_micro_batch_size_per_gpu
    log_prob_micro_batch: int  # ref / rollout log_prob_micro_batch_size_per_gpu


def activation_bytes(model: Model, sequences: int, seq_len: int, training: bool) -> float:
    """Activations of one micro-batch at the end of its forward (one image per sequence),
    gradient checkpointing on; fitted to the H200 measurements (tests/data/h200_actor_memory.jsonl).

    >>> round(activation_bytes(MODELS["Qwen2-VL-2B-Instruct"], 1, 4096, True) / GIB, 2)
    5.55
    """
    tokens = sequences * seq_len
    h, i = model.hidden, model.intermediate
    layer = (8 * h + 4 * i) * 2 if training else (4 * h + 3 * i) * 2
    text = tokens * (layer + (model.layers * h * 2 if training else 0))
    d = model.vision_dim
    vision_layer = (8 * d + 4 * model.vision_mlp) * 2 if training else (4 * d + 3 * model.vision_mlp) * 2
    vision = sequences * IMAGE_PATCHES * (vision_layer + (model.vision_depth * d * 2 if training else 0))
    if not training:  # forward only: one layer at a time, the logits dominate
        return tokens * (model.vocab * LOGIT_BYTES_FORWARD + layer)
    # the fp32 log-softmax works in chunks, two alive at once whatever the micro-batch
    chunks = 2 * LOGPROB_CHUNK * model.vocab * 4
    return text + vision + tokens * model.vocab * LOGIT_BYTES_TRAIN + chunks


def update_bytes(model: Model, trained: int, state: float, micro_batch: int, seq_len: int, gpus: int) -> float:
    """Peak of one actor update above the allowances: ``state`` (resident parameters and
    optimizer moments), the gathered units, and the larger of :func:`backward_bytes` and
    AdamW's step: the fp32 gradients and one more fp32 copy of the trained parameters
    (torch's foreach temporaries), which at small micro-batches is the peak.

    >>> m = MODELS["Qwen2.5-VL-3B-Instruct"]
    >>> round(update_bytes(m, m.params(), 12 * m.params(), 1, 4096, 1) / GIB, 1)  # measured 70.05
    70.9
    """
    grads = 4 * trained / gpus
    step = 2 * grads
    return state + gathered_bytes(model) + max(backward_bytes(model, grads, micro_batch, seq_len), step)


def backward_bytes(model: Model, grads: float, micro_batch: int, seq_len: int) -> float:
    """Backward's peak above the resident state: at its start the forward's activations and
    the logits' gradient, at its end the gradients (``grads`` bytes) and the last recomputed layer.

    >>> m = MODELS["Qwen2.5-VL-7B-Instruct"]
    >>> round(backward_bytes(m, 2 * m.params(), 4, 4096) / GIB, 1)  # measured 23.1 (bf16 gradients)
    26.0
    """
    tokens = micro_batch * seq_len
    start = activation_bytes(model, micro_batch, seq_len, True) + tokens * model.vocab * LOGIT_GRAD_BYTES
    end = grads + tokens * (8 * model.hidden + 4 * model.intermediate) * 2
    return max(start, end)


def gathered_bytes(model: Model) -> float:
    """The bf16 FSDP units gathered at once: the root (embeddings, head, vision merger; FSDP2
    keeps it gathered after forward) and two decoder layers, one prefetched."""
    largest_layer = sum(a * b for a, b in model.llm_linears())
    return 2 * (model.root_params() + 2 * largest_layer)


def phases(model: Model, setup: Setup, gpus: int, response: int) -> dict[str, float]:
    """Peak bytes per GPU of each phase, and what vLLM needs (see the module docstring)."""
    p = model.params()
    trained = model.lora_params(setup.lora_rank) if setup.lora_rank else p
    seq_len = PROMPT + response
    weights_fp32 = 4 * (p + (trained if setup.lora_rank else 0)) / gpus
    moments = 8 * trained / gpus
    overhead = (OVERHEAD_GIB + CONTEXT_GIB) * GIB  # + the sleeping vLLM process's context
    update = update_bytes(model, trained, weights_fp32 + moments, setup.micro_batch, seq_len, gpus) + overhead
    optim_resident = 0 if setup.offload else moments
    log_probs = (
        weights_fp32 + optim_resident + gathered_bytes(model)
        + activation_bytes(model, setup.log_prob_micro_batch, seq_len, False) + overhead
    )  # fmt: skip
    # During the rollout the actor keeps its shards unless offloaded (gradients are freed).
    resident = 0 if setup.offload else weights_fp32 + moments
    sequences = TRAIN_BATCH * ROLLOUT_N / gpus  # this GPU's share of the step's responses
    lora_slot = 2 * model.lora_params(setup.lora_rank) if setup.lora_rank else 0
    vllm_fixed = 2 * p / setup.tp + lora_slot + VLLM_RESERVE_GIB * GIB
    return {
        "update": update,
        "log_probs": log_probs,
        "resident": resident,
        "vllm_fixed": vllm_fixed,
        "kv_per_sequence": seq_len * model.kv_bytes_per_token() + model.state_bytes_per_sequence(),
        "sequences": sequences,
    }


def fit(model: Model, setup: Setup, card_gb: int, gpus: int, response: int) -> dict | None:
    """The setup's numbers on a card, or None where a phase does not fit (within ``MARGIN``).

    ``gpu_memory_utilization`` is the recipes' 0.6 where the card leaves that beside the
    actor's resident shards, else the most it leaves (in steps of 0.05); it must hold
    vLLM's weights and the KV cache of at least one prompt's rollouts.
    """
    card = card_gb * 1e9  # cards are sold in GB
    est = phases(model, setup, gpus, response)
    if max(est["update"], est["log_probs"]) > MARGIN * card:
        return None
    free = card - est["resident"] - CONTEXT_GIB * GIB
    util = min(RECIPE_UTILIZATION, math.floor(free / card * 20) / 20)
    kv_room = util * card - est["vllm_fixed"]
    concurrent = min(est["sequences"], kv_room / est["kv_per_sequence"]) if kv_room > 0 else 0
    if concurrent < MIN_CONCURRENT:
        return None
    return {**est, "util": util, "concurrent": int(concurrent)}


def candidates(lora_rank: int, gpus: int):
    """Setups from fastest to leanest: full before LoRA, no offload before offload, TP 1 before 2,
    the largest micro-batches first (each must divide this GPU's share of the batch)."""
    share = TRAIN_BATCH * ROLLOUT_N // gpus
    for rank in (0, lora_rank):
        for offload in (False, True):
            for tp in (1, 2):
                for mb in (8, 4, 2, 1):
                    for lp in (16, 8, 4, 2, 1):
                        if share % mb == 0 and share % lp == 0 and lp >= mb:
                            yield Setup(rank, offload, tp, mb, lp)


def best(model: Model, card_gb: int, gpus: int, response: int, lora_rank: int) -> tuple[Setup, dict] | None:
    """The first candidate that fits (see ``candidates``).

    >>> setup, _ = best(MODELS["Qwen2.5-VL-7B-Instruct"], 24, 8, 2048, 64)
    >>> setup.lora_rank, setup.offload, setup.tp
    (64, False, 2)
    """
    for setup in candidates(lora_rank, gpus):
        numbers = fit(model, setup, card_gb, gpus, response)
        if numbers:
            return setup, numbers
    return None


def table(gpus: int, response: int, lora_rank: int) -> list[str]:
    rows = [
        "| model | card | training | actor micro-batch | log-prob micro-batch | actor offload | rollout TP "
        "| gpu_memory_utilization | est. update peak | responses in KV |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in MODELS.values():
        for card in CARDS_GB:
            found = best(model, card, gpus, response, lora_rank)
            if not found:
                rows.append(f"| {model.name} | {card} GB | does not fit | | | | | | | |")
                continue
            setup, n = found
            mode = f"LoRA r{setup.lora_rank}" if setup.lora_rank else "full"
            rows.append(
                f"| {model.name} | {card} GB | {mode} | {setup.micro_batch} | {setup.log_prob_micro_batch} "
                f"| {'yes' if setup.offload else 'no'} | {setup.tp} | {n['util']:.2f} "
                f"| {n['update'] / 1e9:.1f} GB | {n['concurrent']} of {int(n['sequences'])} |"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", type=int, default=8, help="GPUs the actor is sharded over (default 8)")
    parser.add_argument("--response", type=int, default=2048, help="max response length (default 2048)")
    parser.add_argument("--lora-rank", type=int, default=64, help="rank tried where full fine-tuning does not fit")
    args = parser.parse_args()
    print(f"ESTIMATE, not a measurement: {args.gpus} GPUs, sequences of {PROMPT} + {args.response} tokens, "
          f"{TRAIN_BATCH} prompts x {ROLLOUT_N} rollouts a step")  # fmt: skip
    for model in MODELS.values():
        p, v = model.params(), model.vision_params()
        card = f"{PUBLISHED_PARAMS[model.name] / 1e9:.2f}B" if model.name in PUBLISHED_PARAMS else "no count"
        print(f"{model.name}: {p / 1e9:.3f}B parameters ({v / 1e9:.3f}B vision; the card says "
              f"{card}), LoRA r{args.lora_rank}: "
              f"{model.lora_params(args.lora_rank) / 1e6:.1f}M, KV {model.kv_bytes_per_token() / 1024:.1f} KiB/token")  # fmt: skip
        for setup in (Setup(0, False, 1, 1, 1), Setup(args.lora_rank, False, 1, 1, 1)):
            est = phases(model, setup, args.gpus, args.response)
            mode = f"LoRA r{setup.lora_rank}" if setup.lora_rank else "full"
            print(f"  {mode}, micro-batch 1: update {est['update'] / 1e9:.1f} GB, log-probs {est['log_probs'] / 1e9:.1f} GB, "
                  f"actor resident in rollout {est['resident'] / 1e9:.1f} GB, vLLM weights+reserve "
                  f"{est['vllm_fixed'] / 1e9:.1f} GB + KV {est['kv_per_sequence'] / 1e9:.2f} GB per response")  # fmt: skip
    print("\n".join(table(args.gpus, args.response, args.lora_rank)))


if __name__ == "__main__":
    main()
