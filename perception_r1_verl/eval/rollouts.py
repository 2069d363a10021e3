"""One self-contained HTML page of the rollouts verl dumped during training.

With ``trainer.rollout_data_dir=DIR`` verl 0.9.1 writes ``DIR/{step}.jsonl`` after every
training step (there is no frequency setting), one line per rollout, via
``_write_generations`` of the trainer:

- keys ``input`` (the prompt, decoded with ``skip_special_tokens=True``: the chat
  template's role names stay, the image tokens go), ``output`` (the response, decoded the
  same way: Qwen2-VL's ``<|box_start|>`` tokens are dropped, leaving ``(x1,y1),(x2,y2)``),
  ``gts`` (the row's ``reward_model.ground_truth``, verbatim), ``score`` (the summed
  token-level reward) and ``step``;
- the v1 trainer (``trainer.use_v1=true``, verl's default and the recipes' choice) adds
  only ``uid`` (``{prompt uuid}_{session}_{output}``: the rollouts of one prompt share the
  first part), and this plugin's wrapper (:mod:`perception_r1_verl.plugin.step_metrics`) adds
  ``data_source``, ``index`` and ``task`` of the row, ``is_padding`` and every
  ``reward_extra_info`` key: each reward component as the manager computed it (``None``
  where it does not apply) and the counters ``reward_timeout``/``reward_error``;
- the legacy trainer adds every ``reward_extra_info`` column, but no index.

A rollout with a dumped ``index`` is matched to the row of that ``data_source`` and
``extra_info.index`` whose ground truth equals the dumped one. Otherwise (a plain verl
dump, or an index that names no row with that ground truth, counted) it is matched by its
ground truth (compared as parsed JSON) and its prompt (every message text of the row,
``<image>`` removed and whitespace collapsed, must occur in ``input``). A rollout that
matches no row, or several different rows, is counted; unmatched ones are listed apart.
verl's padding samples (``is_padding``) are counted and left out. Components come from the
dump when it has them, else they are recomputed from ``output`` with
:func:`perception_r1_verl.rewards.compute_score` (default reward settings, so overridden
reward kwargs are not seen; the format of Qwen2-VL rows is recomputed accepting any style,
since the dump lost the box tokens), and a recomputed score that differs from the dumped
one is counted.
"""

from __future__ import annotations

import html
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import NamedTuple

import numpy as np
import orjson
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, UnidentifiedImageError

from .. import rewards
from ..boxes import pairwise_iou_giou
from ..frames import row_frame, to_pixels
from ..parsing import Answer, parse_answer
from ..plugin.step_metrics import COUNTERS
from ..prompts import IMAGE_TOKEN
from .dataset import Sample, read_images
from .drawing import PRED_COLOR, THUMB, draw_boxes, draw_points, img_tag
from .metrics import get_metric
from .report import _CSS

DUMP_NAME = re.compile(r"(\d+)\.jsonl")
DEFAULT_LAST = 10  # steps shown when neither steps nor last is given
# Box spam: more than SPAM_FACTOR times the ground-truth objects and SPAM_MARGIN more.
SPAM_FACTOR, SPAM_MARGIN = 3, 5
REPEAT_IOU = 0.9  # two answer boxes overlapping this much are one box repeated
TEXT_LIMIT = 3000  # characters of a rollout's text shown
HACKS = {
    "box_spam": f"more than {SPAM_FACTOR}x the ground-truth objects and at least {SPAM_MARGIN} more",
    "repeated": f"two answer boxes overlap at IoU >= {REPEAT_IOU}, or a point is given twice",
    "empty": "no answer text, or an empty list where the ground truth has objects",
}
UNPARSABLE_RULE = (
    "grounding, counting, detection: no answer in any recognised style (JSON, box tokens, "
    "plain [x1, y1, x2, y2]) in a non-empty answer; OCR: think/answer tags not as the prompt asked"
)
_COMPONENTS = tuple(k for k in rewards.component_keys() if k != "score")
_VIDEO_TOKEN = "<video>"


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


# ---------------------------------------------------------------- reading the dump


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
    if any(k in obj for k in _COMPONENTS):  # the legacy trainer's reward_extra_info columns
        dumped = {k: float(obj[k]) for k in _COMPONENTS if _number(obj.get(k))}
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


# ---------------------------------------------------------------- matching rows


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
class _Row:
    data: int
    sample: Sample
    parts: tuple


class Match(NamedTuple):
    row: _Row | None
    reason: str | None  # why no row matched
    ambiguous: bool = False  # several different rows matched
    by_index: bool = False  # matched by the dumped data_source and index
    index_miss: bool = False  # the dump's index named no row with its ground truth


class TrainRows:
    """The rows of one or more training parquets, looked up by the dumped ``data_source``
    and ``index``, or by ground truth and prompt."""

    def __init__(self, paths):
        self.paths = [Path(p) for p in paths]
        self.by_truth: dict[str, list[_Row]] = {}
        self.by_index: dict[tuple[str, str], list[_Row]] = {}
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
                entry = _Row(d, sample, tuple(prompt_parts(prompt)))
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


# ---------------------------------------------------------------- judging a rollout


def n_truth(task: str, gt: dict) -> int:
    """Objects in a ground truth, as the task's metric counts them (0 for OCR).

    >>> n_truth("grounding", {"bbox_2d": [0, 0, 1, 1]}), n_truth("counting", {"count": 7, "points": []})
    (1, 7)
    """
    return get_metric(task).n_truth(gt)


def judge(task: str, answer: Answer, n_gt: int) -> dict[str, str]:
    """The rules a parsed answer breaks: ``unparsable`` and the :data:`HACKS`, explained.

    >>> judge("grounding", parse_answer(str([[1, 2, 30, 40]] * 8)), 1)
    {'box_spam': '8 objects, ground truth 1', 'repeated': '28 repeated pairs'}
    >>> judge("detection", parse_answer("[]"), 3), judge("counting", parse_answer("I see none"), 2)
    ({'empty': 'empty list, ground truth 3'}, {'unparsable': 'no answer found'})
    """
    flags = {}
    if not answer.text.strip():
        flags["empty"] = "no answer text"
        return flags
    if not get_metric(task).boxes:  # free text: only the tags can be wrong
        if not answer.tags_ok:
            flags["unparsable"] = "think/answer tags not as asked"
        return flags
    if not answer.parsed:
        flags["unparsable"] = "no answer found"
        return flags
    if answer.n_items == 0 and n_gt > 0:
        flags["empty"] = f"empty list, ground truth {n_gt}"
    if answer.n_items > max(SPAM_FACTOR * n_gt, n_gt + SPAM_MARGIN):
        flags["box_spam"] = f"{answer.n_items} objects, ground truth {n_gt}"
    pairs = 0
    if len(answer.boxes) > 1:
        overlap = pairwise_iou_giou(answer.boxes, answer.boxes)[0]
        pairs += int(np.triu(overlap >= REPEAT_IOU, 1).sum())
    if len(answer.points) > 1:
        pairs += len(answer.points) - len(np.unique(answer.points, axis=0))
    if pairs:
        flags["repeated"] = f"{pairs} repeated pair{'s' * (pairs > 1)}"
    return flags


def _recompute(rollout: Rollout, sample: Sample) -> dict | None:
    info = dict(sample.extra_info)
    if info.get("model_family") == "qwen2_vl":
        info.pop("model_family")  # the dump dropped the box tokens this family is asked for
    try:
        return rewards.compute_score(sample.data_source, rollout.output, rollout.gts, extra_info=info)
    except (ValueError, TypeError):
        return None


def analyse(rollout: Rollout, row: _Row, counts: Counter) -> None:
    """Fill ``rollout``'s task, parsed answer, flags and components from its matched ``row``."""
    sample = row.sample
    rollout.data, rollout.row, rollout.task = row.data, sample.row, sample.task
    rollout.answer = parse_answer(rollout.output, think=sample.think)
    rollout.flags = judge(sample.task, rollout.answer, n_truth(sample.task, sample.ground_truth))
    names = rewards.get_reward_cls(sample.task).components
    if rollout.dumped is not None:
        rollout.components = {k: rollout.dumped[k] for k in names if k in rollout.dumped}
        return
    result = _recompute(rollout, sample)
    if result is None:
        counts["reward_errors"] += 1
        return
    rollout.components = {k: float(result[k]) for k in names if k in result}
    rollout.recomputed_score = float(result["score"])
    if abs(rollout.recomputed_score - rollout.score) > 1e-6:
        counts["score_mismatches"] += 1


# ---------------------------------------------------------------- the summary


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def step_summary(rollouts: list[Rollout]) -> dict:
    """Means and shares of one step's rollouts; shares are over the matched ones.

    >>> r = Rollout(1, 1, "1.jsonl:1", "", "", None, 2.0, None, None, row=0, task="grounding", components={"iou": 0.5})
    >>> step_summary([r, Rollout(1, 2, "1.jsonl:2", "", "", None, 0.0, None, None)])["score"]
    1.0
    """
    matched = [r for r in rollouts if r.row is not None]
    out = {"rollouts": len(rollouts), "matched": len(matched), "score": _mean(r.score for r in rollouts)}
    for rule in ("unparsable", *HACKS):
        out[rule] = sum(rule in r.flags for r in matched) / len(matched) if matched else None
    for key in _COMPONENTS:
        out[key] = _mean(r.components.get(key) for r in matched)
    return out


# ---------------------------------------------------------------- drawing and HTML

_EXTRA_CSS = """
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
.text{font-family:monospace;font-size:12px;white-space:pre-wrap;max-height:240px;overflow:auto;background:#f6f6f6}
.flags{color:#a00;font-size:13px}.rule{font-size:13px;color:#555}nav a{margin-right:1em}
"""


def draw_rollout(image: Image.Image, sample: Sample, answer: Answer) -> Image.Image:
    """``image`` with the rollout's boxes and points (red, wide) under the ground truth
    (green, thin), so an exact answer still shows both."""
    image = image.convert("RGB")
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 300))
    frame = row_frame(sample.ground_truth, sample.extra_info)

    def to_image(coords):
        return to_pixels(coords, frame, image.size)

    draw_boxes(draw, [to_image(b) for b in answer.boxes.tolist()], PRED_COLOR, 2 * width, answer.labels, bottom=True)
    draw_points(draw, [to_image(p) for p in answer.points.tolist()], PRED_COLOR, 3 * width)
    get_metric(sample.task).draw_truth(draw, sample.ground_truth, to_image, width)
    image.thumbnail((THUMB, THUMB))
    return image


def _fmt(v) -> str:
    return "" if v is None else f"{v:.3f}"


def _text(text: str) -> str:
    more = len(text) - TEXT_LIMIT
    shown = html.escape(text[:TEXT_LIMIT]) + (f"\n... ({more} more characters)" if more > 0 else "")
    return f'<div class="text">{shown or "<i>(empty)</i>"}</div>'


class _Pictures:
    """The drawn image of each shown rollout, reading each parquet's images once."""

    def __init__(self, rows: TrainRows, shown: list[Rollout], counts: Counter):
        wanted: dict[int, set] = {}
        for r in shown:
            if r.row is not None:
                wanted.setdefault(r.data, set()).add(r.row)
        self.cells = {
            (d, row): cell for d, rs in wanted.items() for row, cell in read_images(rows.paths[d], rs).items()
        }
        self.rows, self.counts, self.missing = rows, counts, set()

    def tag(self, r: Rollout, sample: Sample) -> str:
        cell = self.cells.get((r.data, r.row)) or []
        try:
            image = Image.open(BytesIO(cell[0]["bytes"]))
            image.load()
        except (IndexError, KeyError, TypeError, OSError, UnidentifiedImageError):
            if (r.data, r.row) not in self.missing:
                self.missing.add((r.data, r.row))
                self.counts["missing_images"] += 1
            return '<div class="flags">image missing or unreadable in the parquet</div>'
        try:
            return img_tag(draw_rollout(image, sample, r.answer))
        except ValueError as e:  # a row without an answer frame: its boxes have no place
            self.counts["rows_without_frame"] += 1
            return f'<div class="flags">not drawn: {html.escape(str(e))}</div>'


def _case(r: Rollout, samples: dict, pictures: _Pictures) -> str:
    head = [r.where, f"score {r.score:.3f}"]
    if r.uid:
        head.append(f"uid {r.uid}")
    head += [f"scored 0 in training: {k}" for k in r.counters]
    parts = [f'<div class="case" data-where="{html.escape(r.where)}">']
    if r.row is None:
        parts.append(f'<div class="meta">{html.escape(" | ".join(head))}</div>')
        parts.append(f'<div class="flags">unmatched: {html.escape(r.unmatched)}</div>')
        parts.append(_text(r.output))
        parts.append(f'<div class="meta">ground truth: {html.escape(str(r.gts)[:300])}</div></div>')
        return "".join(parts)
    sample = samples[(r.data, r.row)]
    head[1:1] = [f"{sample.data_source} row {r.row} ({r.task})"]
    comps = " | ".join(f"{k} {v:.3f}" for k, v in r.components.items())
    if r.recomputed_score is not None:
        comps += f" (recomputed; score {r.recomputed_score:.3f})"
    parts.append(f'<div class="meta">{html.escape(" | ".join(head))}</div>')
    parts.append(f'<div class="meta">{html.escape(comps or "no components")}</div>')
    if r.flags:
        flags = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in r.flags.items())
        parts.append(f'<div class="flags">{html.escape(flags)}</div>')
    metric = get_metric(r.task)
    if metric.boxes:
        parts.append(pictures.tag(r, sample))
    parts.append(metric.rollout_note(r.answer, sample.ground_truth))
    parts.append(_text(r.output))
    return "".join(parts) + "</div>"


def _order_best(r: Rollout):
    return (-r.score, -r.step, r.line)


def sections(rollouts: list[Rollout], top_k: int) -> list[tuple[str, str, str, int, list[Rollout]]]:
    """``(id, title, rule, total, shown)`` for every section of the page, in order."""
    matched = [r for r in rollouts if r.row is not None]
    out = []
    by_task: dict[str, list[Rollout]] = {}
    for r in matched:
        by_task.setdefault(r.task, []).append(r)
    for task, mine in sorted(by_task.items()):
        out.append((f"best-{task}", f"Best {task}", "highest score", len(mine), sorted(mine, key=_order_best)[:top_k]))
        worst = sorted(mine, key=lambda r: (r.score, -r.step, r.line))[:top_k]
        out.append((f"worst-{task}", f"Worst {task}", "lowest score", len(mine), worst))
    flagged = [("unparsable", "Unparsable", UNPARSABLE_RULE)]
    flagged += [(rule, f"Suspected reward hack: {rule.replace('_', ' ')}", text) for rule, text in HACKS.items()]
    for rule, title, text in flagged:
        hits = sorted((r for r in matched if rule in r.flags), key=_order_best)
        out.append((rule, title, text + "; highest score first", len(hits), hits[:top_k]))
    unmatched = [r for r in rollouts if r.row is None]
    out.append(
        (
            "unmatched",
            "Unmatched",
            "no row of the data has this ground truth and prompt",
            len(unmatched),
            unmatched[:top_k],
        )
    )
    return out


def _summary_table(by_step: dict[int, list[Rollout]]) -> str:
    rows = {step: step_summary(rs) for step, rs in sorted(by_step.items())}
    keys = [k for k in _COMPONENTS if any(s[k] is not None for s in rows.values())]
    shares = ("unparsable", *HACKS)
    head = ["step", "rollouts", "matched", "mean score", *(f"% {s.replace('_', ' ')}" for s in shares), *keys]
    lines = ["<table id='summary'><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for step, s in rows.items():
        cells = [str(step), str(s["rollouts"]), str(s["matched"]), _fmt(s["score"])]
        cells += ["" if s[k] is None else f"{100 * s[k]:.1f}" for k in shares]
        cells += [_fmt(s[k]) for k in keys]
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "".join(lines) + "</table>"


def _problems(stats: dict) -> str:
    items = [
        f"{stats[k]} {text}"
        for k, text in (
            ("bad_lines", "unreadable dump lines"),
            ("unmatched", "rollouts matched no row"),
            ("ambiguous", "rollouts matched several rows with the same ground truth and prompt (the first is drawn)"),
            (
                "index_misses",
                "rollouts whose dumped data_source and index name no row with their ground truth (other "
                "--data than the training run's?); matched by ground truth and prompt instead",
            ),
            ("padding", "padding samples verl added to fill the batch, left out"),
            ("missing_images", "rows drawn without their image (missing or unreadable)"),
            ("rows_without_frame", "rollouts not drawn: their row has no answer frame"),
            ("reward_errors", "rollouts whose components could not be recomputed"),
            ("reward_timeout", "rollouts the reward manager scored 0 because the reward timed out in training"),
            (
                "reward_error",
                "rollouts the reward manager scored 0 because the reward raised in training (a data error?)",
            ),
            (
                "score_mismatches",
                "recomputed scores differ from the dumped score (other reward settings, or text lost in decoding)",
            ),
            ("bad_rows", "parquet rows skipped (bad ground truth or unknown task)"),
            ("skipped_files", "files in the folder that are not {step}.jsonl"),
        )
        if stats[k]
    ]
    items += [f"{reason}: {n}" for reason, n in stats["unmatched_reasons"].items()]
    items += [f"bad line {w}" for w in stats["bad_line_examples"]]
    if stats["missing_steps"]:
        items.append(f"steps without a dump: {', '.join(map(str, stats['missing_steps']))}")
    items = items or ["none"]
    return "<ul id='problems'>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


def rollout_report(dump_dir, data, out, steps=None, last: int | None = None, top_k: int = 8) -> dict:
    """Write the HTML report of ``dump_dir``'s chosen steps to ``out``; returns its counts.

    ``data`` is the training parquet, or a list of them (verl's ``data.train_files``).
    Raises ValueError when no chosen step has a dump; bad lines, unmatched rollouts and
    missing images are counted and listed in the report.
    """
    available, other = dump_files(dump_dir)
    chosen, missing = choose_steps(available, steps, last)
    if not chosen:
        raise ValueError(f"no {{step}}.jsonl dump in {dump_dir} for the chosen steps")
    rows = TrainRows([data] if isinstance(data, str | Path) else data)
    counts: Counter = Counter()
    by_step, bad = {}, []
    for step in chosen:
        by_step[step], bad_here = read_dump(available[step], step)
        bad += bad_here
    reasons: Counter = Counter()
    samples = {}
    for step, rollouts in by_step.items():
        counts["padding"] += sum(r.padding for r in rollouts)
        counts.update(k for r in rollouts if not r.padding for k in r.counters)
        by_step[step] = rollouts = [r for r in rollouts if not r.padding]
        for r in rollouts:
            match = rows.match(r)
            r.unmatched = match.reason
            counts["ambiguous"] += match.ambiguous
            counts["index_misses"] += match.index_miss
            if match.row is None:
                reasons[r.unmatched] += 1
                continue
            counts["matched_by_index"] += match.by_index
            samples[(match.row.data, match.row.sample.row)] = match.row.sample
            analyse(r, match.row, counts)
    everything = [r for rs in by_step.values() for r in rs]
    parts = sections(everything, top_k)
    shown = list({id(r): r for *_, picks in parts for r in picks}.values())
    pictures = _Pictures(rows, shown, counts)
    body_sections = []
    for sid, title, rule, total, picks in parts:
        cases = "".join(_case(r, samples, pictures) for r in picks)
        body_sections.append(
            f"<section id='{sid}'><h2>{html.escape(title)}: {len(picks)} of {total}</h2>"
            f"<p class='rule'>{html.escape(rule)}</p><div class='grid'>{cases}</div></section>"
        )
    stats = {
        "steps": chosen,
        "missing_steps": missing,
        "rollouts": len(everything),
        "matched": sum(r.row is not None for r in everything),
        "unmatched": sum(reasons.values()),
        "unmatched_reasons": dict(reasons),
        "bad_lines": len(bad),
        "bad_line_examples": bad[:20],
        "bad_rows": len(rows.bad_rows),
        "skipped_files": len(other),
        **{
            k: counts[k]
            for k in (
                "matched_by_index",
                "index_misses",
                "padding",
                "ambiguous",
                "missing_images",
                "rows_without_frame",
                "reward_errors",
                "score_mismatches",
                *COUNTERS,
            )
        },
        "sections": {sid: total for sid, _, _, total, _ in parts},
    }
    nav = "".join(f"<a href='#{sid}'>{html.escape(title)} ({total})</a>" for sid, title, _, total, _ in parts)
    legend = '<p class="legend"><span style="color:#0a0">ground truth</span><span style="color:#e00">rollout</span></p>'
    body = [
        f"<h1>Rollouts: {html.escape(str(dump_dir))}</h1>",
        f"<p>{stats['rollouts']} rollouts of steps {', '.join(map(str, chosen))}; {stats['matched']} matched to "
        f"a row of {html.escape(', '.join(p.name for p in rows.paths))} ({stats['matched_by_index']} by their "
        f"dumped index, the others by ground truth and prompt).</p>",
        f"<nav>{nav}</nav><h2>Per step</h2>{_summary_table(by_step)}",
        f"<h2>Problems</h2>{_problems(stats)}",
        legend,
        *body_sections,
    ]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>rollouts</title>"
        f"<style>{_CSS}{_EXTRA_CSS}</style></head><body>{''.join(body)}</body></html>"
    )
    return stats
