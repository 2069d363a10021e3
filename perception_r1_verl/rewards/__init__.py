"""Perception-R1 rewards with verl's custom reward function contract.

Use from any verl run::

    reward.custom_reward_function.path=pkg://perception_r1_verl.rewards
    reward.custom_reward_function.name=compute_score

``compute_score`` picks the task from ``extra_info["task"]`` (else from the data source's
name), parses the JSON ``ground_truth`` once per distinct string (every rollout of a
prompt shares it), and returns ``{"score": float, <component>: float, ...}``. Keyword
arguments (verl's ``reward_kwargs``) override the task's weights: flat (``iou_shape=
"iou_squared"``) or per task (``detection={"missing_weight": 0.0}``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import orjson

from ..families import answer_style
from .counting import CountingReward
from .detection import DetectionReward
from .format import format_score
from .grounding import GroundingReward
from .ocr import OCRReward
from .registry import REWARDS, get_reward_cls, register
from .render import render_answer, render_items, render_text

__all__ = [
    "COUNTERS",
    "METRIC_PREFIX",
    "REWARDS",
    "CountingReward",
    "DetectionReward",
    "GroundingReward",
    "OCRReward",
    "component_keys",
    "compute_score",
    "format_score",
    "get_reward",
    "max_score",
    "register",
    "render_answer",
    "render_items",
    "render_text",
    "task_of",
]

# Counters the verl reward manager adds to every reward_extra_info beside the components
# (1 where it scored a response 0 for a timeout or an error); the rollout report reads them.
COUNTERS = ("reward_timeout", "reward_error")
# verl's per-step metrics of the components and counters: <prefix>/[<data_source>/]<key>/mean.
METRIC_PREFIX = "perception"

# Substrings of verl data_source names, checked in order (refcoco before coco).
_SOURCE_HINTS = (
    ("ref", "grounding"),
    ("ground", "grounding"),
    ("count", "counting"),
    ("pixmo", "counting"),
    ("ocr", "ocr"),
    ("coco", "detection"),
    ("det", "detection"),
)
# Arguments verl's reward loop may pass that are not reward settings.
_VERL_ARGS = frozenset({"reward_router_address", "reward_model_tokenizer"})


def task_of(data_source: str, extra_info: dict | None = None) -> str:
    """The task of a row: ``extra_info["task"]``, else inferred from the data source.

    >>> task_of("lmms-lab/RefCOCOplus"), task_of("coco_2017", {"task": "detection"})
    ('grounding', 'detection')
    """
    task = (extra_info or {}).get("task")
    if task:
        return task
    source = str(data_source).lower()
    for hint, name in _SOURCE_HINTS:
        if hint in source:
            return name
    raise ValueError(f"cannot tell the task of data source {data_source!r}: set extra_info['task']")


def _fields(cls) -> frozenset:
    return frozenset(cls.__dataclass_fields__)


@lru_cache(maxsize=256)
def _reward(task: str, settings: tuple):
    cls = get_reward_cls(task)
    known = _fields(cls)
    options = {}
    for key, value in settings:
        if key in REWARDS:
            if key == task:
                options.update(value)
        elif key in known:
            options.setdefault(key, value)
        elif key not in _VERL_ARGS and not any(key in _fields(c) for c in REWARDS.values()):
            raise TypeError(f"unknown reward setting {key!r}; settings of {task}: {sorted(known)}")
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown {task} reward settings {sorted(unknown)}; known: {sorted(known)}")
    return cls(**options)


def _freeze(kwargs: dict) -> tuple:
    # Per-task mappings (dicts, or OmegaConf's DictConfig from verl's config) win over flat
    # settings: they are applied first.
    items = sorted(kwargs.items(), key=lambda kv: kv[0] not in REWARDS)
    return tuple((k, tuple(sorted(v.items())) if isinstance(v, Mapping) else v) for k, v in items)


def get_reward(task: str, **settings):
    """The configured reward object of ``task`` (cached): call it as ``reward(completion, truth)``."""
    return _reward(task, _freeze(settings))


def component_keys() -> tuple[str, ...]:
    """``score`` and every component of every registered task, in a fixed order.

    >>> component_keys()[:4]
    ('score', 'count', 'exact', 'ratio')
    """
    keys = {"score": None}
    for task in sorted(REWARDS):
        keys.update(dict.fromkeys(REWARDS[task].components))
    return tuple(keys)


def max_score(task: str, **settings) -> float:
    """The score of the exact ground-truth answer under these settings.

    >>> max_score("detection"), max_score("grounding", format_weight=0.5)
    (3.0, 1.5)
    """
    return get_reward(task, **settings).max_score


@lru_cache(maxsize=8192)
def _truth(task: str, ground_truth: str):
    try:
        parsed = orjson.loads(ground_truth)
        return get_reward_cls(task).prepare(parsed)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"bad {task} ground truth {ground_truth[:200]!r}: {e!r}") from e


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    """verl's custom reward function: score one completion against one JSON ground truth.

    Malformed completions score low, never raise; a malformed ground truth or an unknown
    task raises ``ValueError`` naming it (a data error, reported by the reward manager).

    >>> compute_score("refcoco", '[{"bbox_2d": [0, 0, 10, 10]}]', '{"bbox_2d": [0, 0, 10, 10]}')["score"]
    2.0
    """
    extra_info = extra_info or {}
    task = task_of(data_source, extra_info)
    reward = _reward(task, _freeze(kwargs)) if kwargs else _reward(task, ())
    truth = _truth(task, ground_truth if isinstance(ground_truth, str) else orjson.dumps(ground_truth).decode())
    style = answer_style(extra_info.get("model_family"))
    return reward(solution_str, truth, bool(extra_info.get("think", False)), style)
