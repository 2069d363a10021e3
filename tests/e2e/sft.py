"""Supervised fine-tuning of a tiny Qwen-VL on a split's exact answers: the miniature's "instruct" start.

    python tests/e2e/sft.py MODEL_DIR TRAIN_PARQUET OUT_DIR [--steps N] [--lr LR] [--seed S]

The paper starts GRPO from an instruct checkpoint; a random tiny model has none, so this
loop teaches it the task's answer syntax (not where the box goes: see README), from the
rewards' own ``render_answer`` (the exact answer a perfect model writes). Each row is
presented as verl's ``RLHFDataset`` presents it (``eval.generate.prepare``: the chat
template with the generation prompt, the image resized by the Qwen-VL rule), the answer
and ``<|im_end|>`` appended; the loss covers the answer tokens only.

A plain PyTorch loop, not verl's SFT trainer: verl 0.9.1's ``fsdp_sft_trainer`` reads
text-only parquet (``SFTDataset``/``MultiTurnSFTDataset`` tokenize ``messages`` without a
processor, no ``images`` column), and a dozen lines here cost less on 2 CPU cores than a
Ray-less torchrun launch would.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from perception_r1_verl.data.qwen_vl import load_processor
from perception_r1_verl.eval.generate import patch_factor, prepare
from perception_r1_verl.rewards import render_answer

IM_END = "<|im_end|>"


def examples(parquet: Path, processor) -> list[tuple[str, list, str]]:
    """(chat text up to the answer, images, answer + end marker) of every row."""
    factor = patch_factor(processor)
    out = []
    for row in pq.read_table(parquet, columns=["prompt", "images", "reward_model", "extra_info"]).to_pylist():
        info = row["extra_info"]
        text, images = prepare(row["prompt"], row["images"] or [], info, processor, factor)
        truth = json.loads(row["reward_model"]["ground_truth"])
        answer = render_answer(info["task"], truth, info["model_family"], info.get("think", False))
        out.append((text, images, answer + IM_END))
    return out


def batch_inputs(processor, batch) -> dict:
    """Padded model inputs with ``labels`` = the answer tokens (-100 elsewhere, padding too)."""
    prompts = processor(text=[b[0] for b in batch], images=[im for b in batch for im in b[1]] or None)
    n_prompt = [len(ids) for ids in prompts["input_ids"]]
    full = processor(
        text=[b[0] + b[2] for b in batch],
        images=[im for b in batch for im in b[1]] or None,
        padding=True,
        return_tensors="pt",
    )
    labels = full["input_ids"].clone()
    labels[full["attention_mask"] == 0] = -100
    for i, n in enumerate(n_prompt):  # right padding: the prompt is the first n tokens
        labels[i, :n] = -100
    return {**full, "labels": labels}


def answer_loss(model, inputs: dict) -> torch.Tensor:
    """Cross-entropy of the answer tokens, with the LM head applied to those positions only: the
    151,936-token head over every prompt and image position would cost most of the step."""
    labels = inputs.pop("labels")
    hidden = model.model(**inputs).last_hidden_state
    keep = labels[:, 1:] != -100  # position t predicts token t + 1
    logits = model.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][keep])


def save(model, processor, model_dir: Path, out: Path) -> None:
    model.to(torch.bfloat16).save_pretrained(out)
    processor.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # tiny_models' special-token marking, as it is
        (out / name).write_bytes((model_dir / name).read_bytes())


def train(model_dir: Path, parquet: Path, out: Path, steps: int, lr: float, batch_size: int, seed: int, log=print):
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    rng = random.Random(seed)
    processor = load_processor(model_dir)
    processor.tokenizer.padding_side = "right"
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    data = examples(parquet, processor)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    order: list[int] = []
    start, losses = time.monotonic(), []
    for step in range(1, steps + 1):
        if len(order) < batch_size:
            order += rng.sample(range(len(data)), len(data))
        batch, order = [data[i] for i in order[:batch_size]], order[batch_size:]
        loss = answer_loss(model, batch_inputs(processor, batch))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0 or step == steps:
            log(
                f"[sft] step {step}/{steps}: loss {sum(losses[-50:]) / len(losses[-50:]):.3f} ({time.monotonic() - start:.0f} s)"
            )
    save(model, processor, model_dir, out)
    return {"steps": steps, "first_loss": losses[0], "last_loss": sum(losses[-50:]) / len(losses[-50:])}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path)
    p.add_argument("train", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(json.dumps(train(args.model, args.train, args.out, args.steps, args.lr, args.batch_size, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
