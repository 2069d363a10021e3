"""The recipe's zero-shot preflight: the base model on a few val rows of each task, before training.

An IoU reward that cannot rise because the model answers in one coordinate frame and the
data expects another is the most reported failure of every peer, found today only from a
flat reward curve after the GPU time is spent. So a recipe that is about to launch on GPUs
first generates with the base model (``perception-r1-eval generate``; vLLM where it
imports, as the rollouts) on the first ``PREFLIGHT_ROWS`` val rows of each task (default
64; ``0`` skips), scores them (``perception-r1-eval score``), prints each task's zero-shot
metrics and stops on ``score``'s frame diagnosis (``eval/frame_check.py``) when the answers
fit another frame clearly better. Without GPUs it runs only when ``PREFLIGHT_ROWS`` is set
(the CPU training run sets it for its model: tests/e2e).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq

from perception_r1_verl.eval.frame_check import diagnosis_line
from perception_r1_verl.eval.generate import generate
from perception_r1_verl.eval.metric import format_value, metric_names
from perception_r1_verl.eval.score import score

DEFAULT_ROWS = 64


def preflight_rows(env_value: str | None, launching: bool) -> int:
    """Rows per task: ``PREFLIGHT_ROWS`` when set, else DEFAULT_ROWS before a GPU launch, else 0.

    >>> preflight_rows(None, True), preflight_rows(None, False), preflight_rows("0", True), preflight_rows("8", False)
    (64, 0, 0, 8)
    >>> preflight_rows("many", True)
    Traceback (most recent call last):
    ...
    SystemExit: PREFLIGHT_ROWS must be a whole number of rows (0 skips the preflight), got 'many'
    """
    if env_value is None or not env_value.strip():
        return DEFAULT_ROWS if launching else 0
    try:
        rows = int(env_value)
    except ValueError:
        raise SystemExit(
            f"PREFLIGHT_ROWS must be a whole number of rows (0 skips the preflight), got {env_value!r}"
        ) from None
    return max(rows, 0)


def head_rows(parquet: Path, n: int, out: Path) -> Path:
    """The first ``n`` rows of ``parquet`` (images included, read in batches) as ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    source = pq.ParquetFile(parquet)
    with pq.ParquetWriter(out, source.schema_arrow) as writer:
        left = n
        for batch in source.iter_batches(batch_size=min(n, 64)):
            writer.write_batch(batch.slice(0, left))
            left -= min(left, batch.num_rows)
            if not left:
                break
    return out


def local_model(path: str) -> str:
    """A local folder for ``path``: itself, or the hub's snapshot (its cache when offline)."""
    from perception_r1_verl.recipe.hub import is_hub_id

    if not is_hub_id(path):
        return path
    from huggingface_hub import snapshot_download

    return snapshot_download(path)


def summary_line(name: str, metrics: dict) -> str:
    """One task's zero-shot metrics, as ``score`` names them.

    >>> summary_line("refcoco/val", {"task": "grounding", "n_samples": 8, "mIoU": 0.25, "n_unparsable": 1,
    ...     "frame_diagnosis": {"status": "ok"}})
    '[recipe] zero-shot refcoco/val (grounding, 8 rows): mIoU 25.0; unparsable 1; frame: ok'
    """
    values = ", ".join(f"{k} {format_value(k, metrics[k])}" for k in metric_names(metrics)[:4])
    frame = (metrics.get("frame_diagnosis") or {}).get("status", "not checked")
    return (
        f"[recipe] zero-shot {name} ({metrics['task']}, {metrics['n_samples']} rows): {values}; "
        f"unparsable {metrics.get('n_unparsable', 0)}; frame: {frame}"
    )


def zero_shot(model: str, val_files: list, rows: int, out_dir: Path, max_new_tokens: int, log=print) -> list[str]:
    """Generate and score ``rows`` rows of each val file with ``model``; the frame mismatches found.

    Everything lands in ``out_dir/<val file's folder>/`` (rows.parquet, responses.jsonl,
    metrics.json, metrics.md), made afresh: responses of another model are never reused.
    One engine serves every file (``generate``'s ``engines``).
    """
    model = local_model(model)
    engines: dict = {}
    problems = []
    for val in map(Path, val_files):
        name = f"{val.parent.name}/{val.stem}"
        work = out_dir / val.parent.name
        shutil.rmtree(work, ignore_errors=True)
        subset = head_rows(val, rows, work / "rows.parquet")
        generate(
            model, subset, work / "responses.jsonl", max_new_tokens=max_new_tokens, engines=engines,
            gpu_memory_utilization=0.5, log=lambda _msg: None,
        )  # fmt: skip
        metrics = score(subset, work / "responses.jsonl", work, report=False)
        log(summary_line(name, metrics))
        line = diagnosis_line(metrics.get("frame_diagnosis") or {})
        if line:
            problems.append(f"{name}: {line}")
    return problems
