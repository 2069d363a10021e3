"""Matching each dumped rollout to the training row it came from: by its dumped index, else
by its ground truth and prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import orjson
import pyarrow.parquet as pq

from ... import rewards
from ...prompts import IMAGE_TOKEN
from ..dataset import Sample
from .dump import Rollout

_VIDEO_TOKEN = "<video>"


def truth_key(gt) -> str | None:
    """A ground truth as canonical JSON, so a dumped string and a parquet cell compare.

    >>> truth_key('{"b": 1, "a": [1, 2]}') == truth_key({"a": [1, 2], "b": 1})
    True
    >>> truth_key(None) is None
    True
    """
    if gt is None:
        return None
    if isinstance(gt, str | bytes):
        try:
            gt = orjson.loads(gt)
        except orjson.JSONDecodeError:
            return gt if isinstance(gt, str) else gt.decode(errors="replace")
    return orjson.dumps(gt, option=orjson.OPT_SORT_KEYS).decode()


def _squash(text: str) -> str:
    return " ".join(text.split())


def prompt_parts(prompt) -> list[str]:
    """Each message text of a row's ``prompt``, without image/video placeholders, squashed.

    >>> prompt_parts([{"role": "user", "content": "<image>Output the  box\\nof the dog."}])
    ['Output the box of the dog.']
    """
    parts = []
    for message in prompt or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # OpenAI-style [{"type": "text", "text": ...}, ...]
            content = " ".join(c.get("text") or "" for c in content if isinstance(c, dict))
        if isinstance(content, str):
            text = _squash(content.replace(IMAGE_TOKEN, " ").replace(_VIDEO_TOKEN, " "))
            if text:
                parts.append(text)
    return parts


@dataclass(frozen=True, slots=True)
class Row:
    data: int
    sample: Sample
    parts: tuple


class Match(NamedTuple):
    row: Row | None
    reason: str | None  # why no row matched
    ambiguous: bool = False  # several different rows matched
    by_index: bool = False  # matched by the dumped data_source and index
    index_miss: bool = False  # the dump's index named no row with its ground truth


class TrainRows:
    """The rows of one or more training parquets, looked up by the dumped ``data_source``
    and ``index``, or by ground truth and prompt."""

    def __init__(self, paths):
        self.paths = [Path(p) for p in paths]
        self.by_truth: dict[str, list[Row]] = {}
        self.by_index: dict[tuple[str, str], list[Row]] = {}
        self.bad_rows: list[str] = []
        for d, path in enumerate(self.paths):
            columns = ("data_source", "prompt", "reward_model", "extra_info")
            table = pq.read_table(path, columns=list(columns))
            for row, (source, prompt, reward_model, extra_info) in enumerate(
                zip(*(table.column(c).to_pylist() for c in columns), strict=True)
            ):
                extra_info = extra_info or {}
                gt_text = (reward_model or {}).get("ground_truth")
                try:
                    gt = orjson.loads(gt_text) if isinstance(gt_text, str | bytes) else gt_text
                    task = rewards.task_of(source or "", extra_info)
                except (orjson.JSONDecodeError, ValueError) as e:
                    self.bad_rows.append(f"{path.name} row {row}: {e}")
                    continue
                if not isinstance(gt, dict):
                    self.bad_rows.append(f"{path.name} row {row}: ground truth is not a JSON object")
                    continue
                sample = Sample(row, str(extra_info.get("index", row)), task, source or "", gt, extra_info)
                entry = Row(d, sample, tuple(prompt_parts(prompt)))
                self.by_truth.setdefault(truth_key(gt), []).append(entry)
                if extra_info.get("index") is not None:  # the fallback row number is not what verl dumps
                    self.by_index.setdefault((source or "", sample.index), []).append(entry)

    def match(self, rollout: Rollout) -> Match:
        """The row of ``rollout``: by its dumped index when that row has its ground truth,
        else by ground truth and prompt."""
        key = truth_key(rollout.gts)
        if key is None:
            return Match(None, "no ground truth in the dump")
        miss = rollout.index is not None and rollout.data_source is not None
        if miss:
            hits = [
                r
                for r in self.by_index.get((rollout.data_source, rollout.index), ())
                if truth_key(r.sample.ground_truth) == key
            ]
            if hits:
                return Match(hits[0], None, len(hits) > 1, by_index=True)
        candidates = self.by_truth.get(key)
        if not candidates:
            return Match(None, "ground truth in no row", index_miss=miss)
        text = _squash(rollout.input)
        hits = [r for r in candidates if r.parts and all(p in text for p in r.parts)]
        if not hits:
            return Match(None, "ground truth found, prompt differs", index_miss=miss)
        # The most specific prompt wins (a row whose text contains another row's).
        best = max(hits, key=lambda r: sum(map(len, r.parts)))
        same = [r for r in hits if r.parts == best.parts]
        return Match(best, None, len(same) > 1, index_miss=miss)
