"""Reading verl's rollout dump: the ``{step}.jsonl`` files of a folder, the steps chosen,
one :class:`Rollout` per line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ... import rewards
from ...parsing import Answer
from ...plugin.step_metrics import COUNTERS

DUMP_NAME = re.compile(r"(\d+)\.jsonl")
DEFAULT_LAST = 10  # steps shown when neither steps nor last is given
COMPONENTS = tuple(k for k in rewards.component_keys() if k != "score")


@dataclass(slots=True)
class Rollout:
    """One dumped line and what was learned from it; ``where`` is ``{step}.jsonl:{line}``."""

    step: int
    line: int
    where: str
    input: str
    output: str
    gts: object
    score: float
    uid: str | None
    dumped: dict | None  # the dump's reward components (None: the dump has none)
    data_source: str | None = None  # the row's, when the dump has them
    index: str | None = None
    padding: bool = False  # one of verl's no-op samples that fill up the batch
    counters: tuple = ()  # the manager's counters set for it: reward_timeout, reward_error
    data: int | None = None  # which --data file matched, and its row
    row: int | None = None
    unmatched: str | None = None  # why no row matched
    task: str | None = None
    components: dict = field(default_factory=dict)
    recomputed_score: float | None = None
    answer: Answer | None = None
    flags: dict = field(default_factory=dict)  # rule -> a short explanation


def dump_files(folder) -> tuple[dict[int, Path], list[str]]:
    """``{step: path}`` of the ``{step}.jsonl`` files in ``folder``, and the other names.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); _ = [(d / n).write_text("") for n in ("3.jsonl", "10.jsonl", "x.txt")]
    >>> dump_files(d)[0] == {3: d / "3.jsonl", 10: d / "10.jsonl"}, dump_files(d)[1]
    (True, ['x.txt'])
    """
    steps, other = {}, []
    for path in sorted(Path(folder).iterdir()):
        m = DUMP_NAME.fullmatch(path.name)
        if m and path.is_file():
            steps[int(m.group(1))] = path
        else:
            other.append(path.name)
    return steps, other


def choose_steps(available, steps=None, last: int | None = None) -> tuple[list[int], list[int]]:
    """The steps to show and the asked-for steps that have no dump.

    ``steps`` picks exactly those, ``last`` the ``last`` latest; neither: ``DEFAULT_LAST``.

    >>> choose_steps([1, 2, 3, 5], steps=[2, 4])
    ([2], [4])
    >>> choose_steps([1, 2, 3, 5], last=2)
    ([3, 5], [])
    """
    available = sorted(available)
    if steps is not None and last is not None:
        raise ValueError("give steps or last, not both")
    if steps is not None:
        wanted = sorted(set(steps))
        return [s for s in wanted if s in available], [s for s in wanted if s not in available]
    last = DEFAULT_LAST if last is None else last
    if last <= 0:
        raise ValueError(f"last must be positive, got {last}")
    return available[-last:], []


def _number(v) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def parse_line(line: bytes, step: int, n: int, where: str) -> Rollout | None:
    """A :class:`Rollout` from one dump line, None when the line is not a rollout.

    >>> r = parse_line(b'{"input": "p", "output": "o", "gts": "{}", "score": 1.5, "step": 2, "uid": "a_0_0"}', 2, 1, "2.jsonl:1")
    >>> r.score, r.uid, r.dumped, r.index
    (1.5, 'a_0_0', None, None)
    >>> r = parse_line(b'{"input": "p", "output": "o", "score": 0, "data_source": "refcoco", "index": 7, "iou": 0, "f1": null, '
    ...                b'"reward_timeout": 1.0, "reward_error": 0.0}', 2, 1, "")
    >>> r.data_source, r.index, r.dumped, r.counters
    ('refcoco', '7', {'iou': 0.0}, ('reward_timeout',))
    >>> parse_line(b'{"input": "p", "output": "o", "score": "NaN"}', 2, 2, "2.jsonl:2") is None
    True
    """
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not (
        isinstance(obj, dict)
        and isinstance(obj.get("input"), str)
        and isinstance(obj.get("output"), str)
        and _number(obj.get("score"))
    ):
        return None
    dumped = None
    if any(k in obj for k in COMPONENTS):  # the legacy trainer's reward_extra_info columns
        dumped = {k: float(obj[k]) for k in COMPONENTS if _number(obj.get(k))}
    uid, index = obj.get("uid", obj.get("request_id")), obj.get("index")
    source = obj.get("data_source")
    return Rollout(
        step,
        n,
        where,
        obj["input"],
        obj["output"],
        obj.get("gts"),
        float(obj["score"]),
        None if uid is None else str(uid),
        dumped,
        source if isinstance(source, str) else None,
        None if index is None else str(index),
        obj.get("is_padding") is True,
        tuple(k for k in COUNTERS if _number(obj.get(k)) and obj[k] > 0),
    )


def read_dump(path: Path, step: int) -> tuple[list[Rollout], list[str]]:
    """The rollouts of one ``{step}.jsonl`` and the places of its unreadable lines."""
    rollouts, bad = [], []
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path.name}:{n}"
            rollout = parse_line(line, step, n, where)
            if rollout is None:
                bad.append(where)
            else:
                rollouts.append(rollout)
    return rollouts, bad
