"""verl reward manager ``perception``: Perception-R1 rewards in verl's reward loop.

Differences from verl's ``naive`` manager, and why:

- the completion is decoded *keeping* special tokens (only end and pad tokens are
  dropped): Qwen2-VL answers with ``<|box_start|>``/``<|object_ref_start|>``, which
  ``skip_special_tokens=True`` deletes, leaving the rewards blind to the box format;
- decoding and ``compute_score`` run in a worker process under a per-response time limit
  (:mod:`.scoring`: a process past its limit is killed, which no thread can be, even one
  that holds the GIL); a timeout, an exception or a malformed row scores 0, is counted in
  ``reward_timeout``/``reward_error`` and logged (rate-limited per kind of error), so
  one bad completion or row never stalls or crashes a training step;
- ``reward_extra_info`` always has the same keys (every component of every task, ``None``
  where a component does not apply): verl builds each batch column from the first
  sample's keys and raises ``KeyError`` when a later sample lacks one.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from functools import partial

from verl import DataProto
from verl.experimental.reward_loop.reward_manager import register
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase
from verl.utils.reward_score import default_compute_score

from perception_r1_verl import rewards
from perception_r1_verl.parsing import END_TOKENS
from perception_r1_verl.plugin.scoring import ScoringPool
from perception_r1_verl.rewards import COUNTERS

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
WARN_INTERVAL_S = 60.0


def end_token_ids(tokenizer) -> frozenset[int]:
    """Ids of the tokenizer's eos and pad tokens and of Qwen's ``<|im_end|>``/``<|endoftext|>``."""
    vocab = tokenizer.get_vocab()
    names = {tokenizer.eos_token, tokenizer.pad_token, *END_TOKENS}
    return frozenset(vocab[name] for name in names if name in vocab)


def decode_response(tokenizer, ids, end_ids: frozenset[int]) -> str:
    """Decode ``ids`` keeping special tokens, dropping only the ``end_ids``."""
    return tokenizer.decode([i for i in ids if i not in end_ids], skip_special_tokens=False)


_last_warning: dict[str, float] = {}
_suppressed: dict[str, int] = {}


def _warn(kind: str, message: str) -> None:
    """Log ``message`` at most once per ``WARN_INTERVAL_S`` per ``kind``, counting the rest."""
    now = time.monotonic()
    if now - _last_warning.get(kind, -math.inf) < WARN_INTERVAL_S:
        _suppressed[kind] = _suppressed.get(kind, 0) + 1
        return
    _last_warning[kind] = now
    more = _suppressed.pop(kind, 0)
    logger.warning("%s%s", message, f" ({more} more {kind} since the last warning)" if more else "")


@register("perception")
class PerceptionRewardManager(RewardManagerBase):
    """Scores one response with ``compute_score`` (default: ``perception_r1_verl.rewards``).

    Manager options come from ``config.reward.reward_kwargs`` (``timeout_s``, default
    ``DEFAULT_TIMEOUT_S``); keyword arguments for the reward function from
    ``config.reward.custom_reward_function.reward_kwargs``, which verl binds itself when a
    ``custom_reward_function.path`` is set and this manager binds to the default otherwise.
    """

    # Parallelism comes from verl's ``reward.num_workers`` processes; two scoring
    # processes each let a slow response run beside the others.
    SCORING_PROCESSES = 2

    def __init__(self, config, tokenizer, compute_score, reward_router_address=None, reward_model_tokenizer=None):
        super().__init__(config, tokenizer, compute_score)
        if compute_score is None or compute_score is default_compute_score:
            # verl hands over its math/code default when no custom function is configured.
            kwargs = dict(config.reward.get("custom_reward_function", {}).get("reward_kwargs", {}) or {})
            compute_score = partial(rewards.compute_score, **kwargs)
        if inspect.iscoroutinefunction(compute_score):
            raise TypeError("the 'perception' reward manager runs compute_score in a process; it must be synchronous")
        self.compute_score = compute_score
        options = config.reward.get("reward_kwargs", {}) or {}
        self.timeout_s = float(options.get("timeout_s", DEFAULT_TIMEOUT_S))
        if not self.timeout_s > 0:
            raise ValueError(f"reward.reward_kwargs.timeout_s must be > 0, got {self.timeout_s}")
        self.extra_keys = (*rewards.component_keys(), *COUNTERS)
        self.end_ids = end_token_ids(tokenizer)
        self.pool = ScoringPool(self._score, self.SCORING_PROCESSES)

    def _score(self, job: tuple) -> tuple[dict, list]:
        """In a worker process: decode and score; the components to log, and unknown keys."""
        data_source, ids, ground_truth, extra_info = job
        text = decode_response(self.tokenizer, ids, self.end_ids)
        result = self.compute_score(
            data_source=data_source, solution_str=text, ground_truth=ground_truth, extra_info=extra_info
        )
        result = result if isinstance(result, dict) else {"score": result}
        components = {key: float(value) for key, value in result.items() if key in self.extra_keys}
        return {**components, "score": float(result["score"])}, sorted(result.keys() - {"score", *self.extra_keys})

    async def run_single(self, data: DataProto) -> dict:
        info = dict.fromkeys(self.extra_keys)
        info.update(dict.fromkeys(COUNTERS, 0.0), score=0.0)
        where = "a row"
        try:
            job = read_row(data[-1])  # multi-sequence outputs are scored on the last sequence, as in verl
            where = f"data_source={job[0]!r} index={job[3].get('index')!r}"
            components, unknown = await self.pool.run(job, self.timeout_s)
            info.update(components)
            if unknown:
                _warn("unknown component", f"perception reward: components {unknown} not logged")
        except TimeoutError:
            _warn("reward_timeout", f"perception reward: {where} took over {self.timeout_s:g}s; scored 0")
            info["reward_timeout"] = 1.0
        except Exception as exc:  # per kind, so a batch with several kinds of error names each
            _warn(f"reward_error {type(exc).__name__}", f"perception reward: {where} raised {exc!r}; scored 0")
            info["reward_error"] = 1.0
        return {"reward_score": info["score"], "reward_extra_info": info}


def read_row(item) -> tuple:
    """``(data_source, response ids, ground truth, extra_info)`` of one row of verl's batch;
    ValueError naming what is malformed (``extra_info`` must be a dict or absent)."""
    response_ids = item.batch["responses"]
    valid_length = int(item.batch["attention_mask"][-response_ids.shape[-1] :].sum())
    row = item.non_tensor_batch
    reward_model, extra_info = row.get("reward_model"), row.get("extra_info")
    if not isinstance(reward_model, dict) or "ground_truth" not in reward_model:
        raise ValueError(f"reward_model must be a dict with ground_truth, got {type(reward_model).__name__}")
    if extra_info is not None and not isinstance(extra_info, dict):
        raise ValueError(f"extra_info must be a dict, got {type(extra_info).__name__}")
    return row.get("data_source"), response_ids[:valid_length].tolist(), reward_model["ground_truth"], extra_info or {}
