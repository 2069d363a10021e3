"""The HTML page: drawn cases per section, the per-step table, the problems list."""

from __future__ import annotations

import html
from collections import Counter
from io import BytesIO
from pathlib import Path

from PIL import Image, ImageDraw, UnidentifiedImageError

from ...frames import row_frame, to_pixels
from ...parsing import Answer
from ...plugin.step_metrics import COUNTERS
from ..dataset import Sample, read_images
from ..drawing import PRED_COLOR, THUMB, draw_boxes, draw_points, img_tag
from ..metrics import get_metric
from ..report import _CSS
from .dump import COMPONENTS, Rollout, choose_steps, dump_files, read_dump
from .judging import HACKS, UNPARSABLE_RULE, analyse, step_summary
from .matching import TrainRows

TEXT_LIMIT = 3000  # characters of a rollout's text shown


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
    keys = [k for k in COMPONENTS if any(s[k] is not None for s in rows.values())]
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
