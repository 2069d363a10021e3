"""Training curves of verl runs: ``perception-r1-eval curves RUN_DIR [RUN_DIR...] --out DIR``.

Reads verl's file logger (``trainer.logger`` with ``file``): one JSON object per line,
``{"step": N, "data": {metric: value}}``, in ``RUN_DIR/metrics.jsonl`` (where
``VERL_FILE_LOGGER_PATH`` points; a ``.jsonl`` file may be given instead of a folder).
Writes ``DIR/curves.png`` (one panel per metric, every run overlaid) and ``DIR/curves.md``
(first, last, min, max of the key metrics and the training reward's first-third vs
last-third mean, per run and per series).

Runs whose folder names differ only in a seed (``grpo_seed0``, ``grpo_seed1``) form one
series, as do the runs of a ``--group NAME=DIR,DIR``: a series is drawn as the mean over
its runs with a min-max band. A metric a run did not log is absent from its panel, never
drawn as 0 (``null``, NaN and non-numbers count as not logged); the reward manager's
timeout and error counters are drawn only when not 0 (curves.md lists the others). A line
that is not such an object is counted and reported; reading stops at ``MAX_BYTES`` a file.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..rewards import COUNTERS
from ..rewards import METRIC_PREFIX as PREFIX

MAX_BYTES = 512 * 2**20  # per metrics file; verl writes some tens of kB per step
MAX_LINE = 8 * 2**20  # one step's record
MAX_PANELS = 60  # the rest are listed in curves.md, not drawn

REWARD = "critic/score/mean"
LENGTH = "response_length/mean"
KL = ("actor/kl_loss", "actor/ppo_kl")
# Is there a learning signal (rewards.signal; the bucketed scores end in /mean, drawn with the
# components), and how many groups FILTER_GROUPS=1 threw away.
SIGNAL = ("groups/zero_signal", "groups/reward_std", "truncated")
EVICTED = "training/filter_groups/evicted_samples"
PLOT_EXTRA = "pip install 'perception-r1-verl[plot]'"

_SEED = re.compile(r"(?:^|[_\-.])seed[_\-=]?\d+(?=$|[_\-.])", re.I)

Curve = dict[int, float]  # step -> value


class CurvesError(Exception):
    """A problem with the command's input, reported as one line (exit 2)."""


@dataclass
class Run:
    name: str
    path: Path  # the metrics file
    metrics: dict[str, Curve] = field(default_factory=dict)
    records: int = 0
    bad_lines: int = 0
    truncated: bool = False


@dataclass
class Series:
    name: str
    runs: list[Run]


# --- reading --------------------------------------------------------------------------------


def parse_record(line: bytes | str) -> tuple[int, dict[str, float]] | None:
    """One file-logger line as (step, its finite numeric metrics), or None if malformed.

    >>> parse_record('{"step": 3, "data": {"critic/score/mean": 0.5, "x": null, "y": NaN, "t": "s"}}')
    (3, {'critic/score/mean': 0.5})
    >>> parse_record('{"step": 3, "data": {"acc": true}}')  # a bool is not a measurement
    (3, {})
    >>> [parse_record(s) for s in ('{"step": 1.5, "data": {}}', '{"data": {}}', '[1]', '{"step": 1, "da')]
    [None, None, None, None]
    """
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    step, data = record.get("step"), record.get("data")
    if not isinstance(step, int) or isinstance(step, bool) or not isinstance(data, dict):
        return None
    values = {
        key: float(v)
        for key, v in data.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }
    return step, values


def metrics_file(path: str | Path) -> Path:
    """The metrics file of a run folder (``metrics.jsonl``), or ``path`` itself if it is a file."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise CurvesError(f"{path}: no such run folder or metrics file")
    file = path / "metrics.jsonl"
    if not file.is_file():
        raise CurvesError(
            f"{path}: no metrics.jsonl (verl's file logger: trainer.logger with 'file', VERL_FILE_LOGGER_PATH={file})"
        )
    return file


def read_run(path: str | Path, name: str | None = None, max_bytes: int = MAX_BYTES, max_line: int = MAX_LINE) -> Run:
    """Every record of a run's metrics file; a later value of a metric at the same step wins
    (verl logs the validation before training as its own record)."""
    file = metrics_file(path)
    run = Run(name or (Path(path).resolve().name if Path(path).is_dir() else file.stem), file)
    read = 0
    with open(file, "rb") as f:
        while True:
            if read >= max_bytes:
                run.truncated = bool(f.read(1))
                break
            line = f.readline(max_line + 1)
            if not line:
                break
            read += len(line)
            if len(line) > max_line:
                run.bad_lines += 1  # too long: skip to the end of the line
                read += _skip_line(f, max_bytes - read)
                continue
            if not line.strip():
                continue
            parsed = parse_record(line)
            if parsed is None:
                run.bad_lines += 1
                continue
            run.records += 1
            step, values = parsed
            for key, value in values.items():
                run.metrics.setdefault(key, {})[step] = value
    return run


def _skip_line(f, budget: int) -> int:
    skipped = 0
    while skipped < budget:
        chunk = f.readline(min(2**20, budget - skipped))
        skipped += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            break
    return skipped


# --- series ---------------------------------------------------------------------------------


def series_name(run_name: str) -> str | None:
    """The run's name without its seed, or None when it names no seed.

    >>> [series_name(n) for n in ("grpo_seed0", "grpo-seed-12-lr1e-6", "Seed3", "grpo", "seedling")]
    ['grpo', 'grpo-lr1e-6', 'seed', None, None]
    """
    if not _SEED.search(run_name):
        return None
    return _SEED.sub("", run_name).strip("_-.") or "seed"


def group_runs(runs: Sequence[Run], groups: Mapping[str, Sequence[Run]] = {}) -> list[Series]:
    """Runs as series: those named alike but for a seed form one, each group one, every other
    run its own (in order of first appearance); a name taken twice gets a number.

    >>> runs = [Run(n, Path(n)) for n in ("sft", "grpo_seed0", "grpo_seed1", "grpo_seed2", "grpo", "sft")]
    >>> [(s.name, [r.name for r in s.runs]) for s in group_runs(runs)]
    [('sft', ['sft']), ('grpo', ['grpo_seed0', 'grpo_seed1', 'grpo_seed2']), ('grpo [2]', ['grpo']), ('sft [2]', ['sft'])]
    >>> [(s.name, len(s.runs)) for s in group_runs(runs[:1], {"mine": runs[1:3]})]
    [('sft', 1), ('mine', 2)]
    """
    seeded: dict[str, list[Run]] = {}
    members: list[list[Run]] = []
    names: list[str] = []
    for run in runs:
        stem = series_name(run.name)
        if stem is None:
            members.append([run])
            names.append(run.name)
        elif stem not in seeded:
            seeded[stem] = [run]
            members.append(seeded[stem])
            names.append(stem)
        else:
            seeded[stem].append(run)
    for name, group in groups.items():
        members.append(list(group))
        names.append(name)
    series, taken = [], set()
    for name, group in zip(names, members):
        unique, n = name, 1
        while unique in taken:
            n += 1
            unique = f"{name} [{n}]"
        taken.add(unique)
        series.append(Series(unique, group))
    return series


def aggregate(curves: Sequence[Curve]) -> tuple[list[int], list[float], list[float], list[float], list[int]]:
    """Steps, then mean, min and max over the curves that have each step, and how many have it.

    >>> aggregate([{1: 0.0, 2: 1.0}, {1: 1.0, 2: 2.0, 3: 5.0}, {1: 2.0, 2: 6.0}])
    ([1, 2, 3], [1.0, 3.0, 5.0], [0.0, 1.0, 5.0], [2.0, 6.0, 5.0], [3, 3, 1])
    >>> aggregate([])
    ([], [], [], [], [])
    """
    steps = sorted({s for c in curves for s in c})
    mean, low, high, count = [], [], [], []
    for step in steps:
        values = [c[step] for c in curves if step in c]
        mean.append(sum(values) / len(values))
        low.append(min(values))
        high.append(max(values))
        count.append(len(values))
    return steps, mean, low, high, count


def series_curve(series: Series, metric: str) -> Curve:
    """The series' mean curve of ``metric`` (empty when no run logged it)."""
    steps, mean, *_ = aggregate([r.metrics[metric] for r in series.runs if metric in r.metrics])
    return dict(zip(steps, mean))


# --- which panels ---------------------------------------------------------------------------


def panels(names: Iterable[str]) -> list[str]:
    """The metrics drawn, in panel order: training reward, ``perception/<source>/<component>``
    (per data source), the signal per source, response length, KL, groups evicted,
    validation (``val-core``, ``val-aux``'s ``mean@1``), then ``eval/*``.

    >>> panels(["eval/miou", "val-aux/refcoco/iou/mean@1", "val-aux/refcoco/iou/std@1", "val-aux/num_turns/mean",
    ...         "actor/ppo_kl", "response_length/mean", "perception/iou/mean", "perception/refcoco/iou/mean",
    ...         "perception/coco/f1/mean", "critic/score/mean", "val-core/refcoco/acc/mean@1", "actor/pg_loss",
    ...         "perception/coco/groups/zero_signal", "perception/coco/groups/all_zero", EVICTED])
    ['critic/score/mean', 'perception/coco/f1/mean', 'perception/refcoco/iou/mean', 'perception/coco/groups/zero_signal', 'response_length/mean', 'actor/ppo_kl', 'training/filter_groups/evicted_samples', 'val-core/refcoco/acc/mean@1', 'val-aux/refcoco/iou/mean@1', 'eval/miou']
    """
    names = set(names)
    per_source = sorted(n for n in names if n.startswith(f"{PREFIX}/") and n.endswith("/mean") and n.count("/") >= 3)
    signal = sorted(n for n in names if n.startswith(f"{PREFIX}/") and n.endswith(SIGNAL) and n.count("/") >= 2)
    val_core = sorted(n for n in names if n.startswith("val-core/"))
    val_aux = sorted(n for n in names if n.startswith("val-aux/") and n.endswith("/mean@1"))
    evals = sorted(n for n in names if n.startswith("eval/"))
    fixed = [n for n in (REWARD, *per_source, *signal, LENGTH, *KL, EVICTED) if n in names]
    return [*fixed, *val_core, *val_aux, *evals]


def zero_counters(runs: Sequence[Run], metrics: Iterable[str]) -> list[str]:
    """The reward manager's counters (``reward_timeout``, ``reward_error``) among ``metrics``
    that are 0 wherever logged: listed in curves.md rather than drawn as empty panels.

    >>> runs = [Run("a", Path("a"), {"perception/x/reward_error/mean": {1: 0.0}, "perception/x/reward_timeout/mean": {1: 0.25}})]
    >>> zero_counters(runs, ["perception/x/reward_error/mean", "perception/x/reward_timeout/mean", "critic/score/mean"])
    ['perception/x/reward_error/mean']
    """
    return [
        m
        for m in metrics
        if m.count("/") >= 2
        and m.split("/")[-2] in COUNTERS
        and all(v == 0 for r in runs for v in r.metrics.get(m, {}).values())
    ]


def key_metrics(names: Iterable[str]) -> list[str]:
    """The metrics of curves.md's table: reward, response length, KL, val-core, eval."""
    return [n for n in panels(names) if not n.startswith(("perception/", "val-aux/"))]


# --- the table ------------------------------------------------------------------------------


def thirds(curve: Curve) -> tuple[float, float] | None:
    """Mean of the first and of the last third of the steps (None under 3 steps).

    >>> thirds({s: float(s) for s in range(1, 8)})  # 7 steps: thirds of 2, the middle one left out
    (1.5, 6.5)
    >>> thirds({1: 1.0, 2: 2.0}) is None
    True
    """
    values = [curve[s] for s in sorted(curve)]
    k = len(values) // 3
    if k == 0:
        return None
    return sum(values[:k]) / k, sum(values[-k:]) / k


def summary(curve: Curve) -> tuple[float, float, float, float]:
    """First, last, min, max.

    >>> summary({3: 2.0, 1: 0.5, 2: 4.0})
    (0.5, 2.0, 0.5, 4.0)
    """
    values = [curve[s] for s in sorted(curve)]
    return values[0], values[-1], min(values), max(values)


def _num(x: float) -> str:
    return f"{x:.4g}"


def markdown(series: Sequence[Series], not_drawn: Sequence[str] = (), zeros: Sequence[str] = ()) -> str:
    """curves.md: what was read, key metrics per run and series, the reward's thirds."""
    runs = [r for s in series for r in s.runs]
    lines = ["# Training curves", "", "| run | file | records | malformed lines | read |", "|---|---|---|---|---|"]
    for r in runs:
        read = f"first {MAX_BYTES // 2**20} MiB only" if r.truncated else "whole"
        lines.append(f"| {r.name} | {r.path} | {r.records} | {r.bad_lines} | {read} |")

    def rows(s: Series) -> list[tuple[str, Callable[[str], Curve]]]:
        own = [(r.name, lambda m, r=r: r.metrics.get(m, {})) for r in s.runs]
        if len(s.runs) > 1:
            own.append((f"{s.name} (mean of {len(s.runs)})", lambda m, s=s: series_curve(s, m)))
        return own

    lines += [
        "",
        "## Key metrics",
        "",
        "| run | metric | steps | first | last | min | max |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {m for r in runs for m in r.metrics}
    for s in series:
        for label, curve_of in rows(s):
            for metric in key_metrics(names):
                curve = curve_of(metric)
                if curve:
                    lines.append(
                        f"| {label} | `{metric}` | {len(curve)} | " + " | ".join(map(_num, summary(curve))) + " |"
                    )
    lines += [
        "",
        f"## Training reward (`{REWARD}`): first third vs last third of the steps",
        "",
        "| run | steps | first third | last third | change |",
        "|---|---|---|---|---|",
    ]
    for s in series:
        for label, curve_of in rows(s):
            curve = curve_of(REWARD)
            t = thirds(curve)
            cells = [_num(t[0]), _num(t[1]), f"{t[1] - t[0]:+.4g}"] if t else ["n/a (under 3 steps)", "", ""]
            lines.append(f"| {label} | {len(curve)} | " + " | ".join(cells) + " |")
    if zeros:
        lines += ["", "0 at every logged step of every run (not drawn): " + ", ".join(f"`{m}`" for m in zeros)]
    if not_drawn:
        lines += ["", f"Not drawn (over {MAX_PANELS} panels): " + ", ".join(f"`{m}`" for m in not_drawn)]
    return "\n".join(lines) + "\n"


# --- the figure -----------------------------------------------------------------------------


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise CurvesError(f"curves need matplotlib: {PLOT_EXTRA}") from None
    return Figure


def draw(series: Sequence[Series], metrics: Sequence[str], path: Path):
    """One panel per metric; a series of several runs is its mean with a min-max band.
    Validation and eval metrics (logged at few steps) get markers. Returns the figure."""
    Figure = _figure_class()  # not pyplot: no global state; PNG goes through the Agg canvas
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    colors = [f"C{i % 10}" for i in range(len(series))]
    for ax, metric in zip(axes, metrics):
        sparse = metric.startswith(("val-", "eval/"))
        for s, color in zip(series, colors):
            curves = [r.metrics[metric] for r in s.runs if metric in r.metrics]
            if not curves:
                continue
            steps, mean, low, high, _ = aggregate(curves)
            label = s.name if len(s.runs) == 1 else f"{s.name} (mean, min-max of {len(s.runs)} runs)"
            ax.plot(steps, mean, color=color, label=label, marker="o" if sparse or len(steps) == 1 else None, ms=3)
            if len(curves) > 1:
                ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics) :]:
        ax.set_axis_off()
    handles, labels = {}, []
    for ax in axes[: len(metrics)]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = h
                labels.append(label)
    if labels:
        fig.legend([handles[label] for label in labels], labels, loc="outside upper center", ncols=min(4, len(labels)))
    fig.savefig(path, dpi=100)
    return fig


def curves(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    groups: Mapping[str, Sequence[str | Path]] = {},
    log: Callable[[str], None] = print,
) -> dict:
    """Read the runs, write ``out/curves.png`` and ``out/curves.md``; return what was read."""
    if not run_dirs and not groups:
        raise CurvesError("no run folder given")
    runs = [read_run(d) for d in run_dirs]
    grouped = {name: [read_run(d) for d in dirs] for name, dirs in groups.items()}
    series = group_runs(runs, grouped)
    every = [r for s in series for r in s.runs]
    for r in every:
        if r.bad_lines:
            log(f"warning: {r.path}: {r.bad_lines} malformed line(s) skipped")
        if r.truncated:
            log(f"warning: {r.path}: read only its first {MAX_BYTES // 2**20} MiB")
        if not r.metrics:
            log(f"warning: {r.path}: no metrics")
    names = {m for r in every for m in r.metrics}
    drawn = panels(names)
    if not drawn:
        raise CurvesError("none of the runs logged a metric that curves draws (critic/score/mean, perception/..., ...)")
    zeros = zero_counters(every, drawn)
    drawn = [m for m in drawn if m not in zeros]
    drawn, not_drawn = drawn[:MAX_PANELS], drawn[MAX_PANELS:]
    _figure_class()  # fail before writing anything
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    draw(series, drawn, out / "curves.png")
    (out / "curves.md").write_text(markdown(series, not_drawn, zeros))
    return {
        "series": {s.name: [r.name for r in s.runs] for s in series},
        "panels": drawn,
        "not_drawn": not_drawn,
        "zero_counters": zeros,
        "bad_lines": {r.name: r.bad_lines for r in every},
        "png": out / "curves.png",
        "md": out / "curves.md",
    }
