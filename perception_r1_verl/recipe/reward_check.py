"""The reward check: each prepared row's reference answer must reach its task's maximum through the
``perception`` reward manager, loaded by verl as the trainer loads it."""

from __future__ import annotations

import asyncio
import json

from perception_r1_verl.recipe.hub import load_tokenizer
from perception_r1_verl.rewards import render_answer


def _reward_input(tokenizer, row: dict, completion: str):
    """A one-row ``DataProto`` laid out as verl's reward loop hands it to a manager."""
    import numpy as np
    import torch
    from verl import DataProto

    response = tokenizer.encode(completion, add_special_tokens=False) + [tokenizer.eos_token_id]
    prompt = torch.tensor([[tokenizer.eos_token_id]])
    responses = torch.tensor([response])
    non_tensors = {key: np.array([row[key]], dtype=object) for key in ("data_source", "reward_model", "extra_info")}
    return DataProto.from_dict(
        tensors={
            "prompts": prompt,
            "responses": responses,
            "attention_mask": torch.ones(1, prompt.shape[1] + responses.shape[1], dtype=torch.long),
        },
        non_tensors=non_tensors,
    )


def score_rows(config, rows: list[dict], tokenizer=None, allow_offline: bool = False) -> list[dict]:
    """Score each row's reference answer and an empty answer through the configured manager.

    The manager is built by verl's ``load_reward_manager`` from ``config`` (so this also
    checks that ``import verl`` registered ``perception``). Returns one dict per row with
    the ``reference`` and ``empty`` results (``reward_score`` and ``reward_extra_info``).
    """
    from verl.trainer.ppo.reward import load_reward_manager

    from perception_r1_verl.plugin.verl_plugin import check_registered

    check_registered()
    tokenizer = tokenizer or load_tokenizer(config, allow_offline)
    manager = load_reward_manager(config, tokenizer)

    async def run_all():
        results = []
        for row in rows:
            truth, info = json.loads(row["reward_model"]["ground_truth"]), row["extra_info"]
            reference = render_answer(info["task"], truth, info["model_family"], think=bool(info.get("think")))
            result = {"row": row}
            for kind, completion in (("reference", reference), ("empty", "")):
                result[kind] = await manager.run_single(_reward_input(tokenizer, row, completion))
            results.append(result)
        return results

    return asyncio.run(run_all())


def check_scores(results: list[dict], reward_kwargs: dict | None = None) -> list[str]:
    """Problems in ``score_rows`` results: a reference answer below its task's maximum.

    A reference that cannot reach the maximum means the data and the rewards disagree
    (coordinate frame, answer format, ground-truth layout): training would chase noise.
    """
    from perception_r1_verl.rewards import max_score

    problems = []
    for result in results:
        info = result["row"]["extra_info"]
        best = max_score(info["task"], **(reward_kwargs or {}))
        got = result["reference"]["reward_score"]
        if got < best - 1e-6:
            problems.append(
                f"row {info.get('index')} ({info['task']}): the ground-truth answer scores {got:.4f} < {best:.4f}"
            )
    return problems


def print_scores(results: list[dict]) -> None:
    for result in results:
        info = result["row"]["extra_info"]
        for kind in ("reference", "empty"):
            extra = result[kind]["reward_extra_info"]
            parts = ", ".join(f"{k}={v:.3f}" for k, v in extra.items() if isinstance(v, float) and k != "score")
            print(f"[recipe]   row {info.get('index')} {kind:9s} score={result[kind]['reward_score']:.3f}  {parts}")
