"""The paper's numbers the benchmark suite is compared with (Perception-R1, arXiv 2504.07954).

Tables 1-3 of the paper report, per benchmark split, the base model ("baseline") and the
model after Perception-R1's GRPO training: Table 1 visual grounding (Qwen2-VL-2B-Instruct),
Table 2 page OCR (Qwen2-VL-2B-Instruct), Table 3 (a) counting (Qwen2-VL-2B-Instruct) and
(b) COCO detection (Qwen2.5-VL-3B-Instruct). Table 4 (general image-understanding
benchmarks) is outside the suite. Values are in %, as printed; edit distance is
lower-is-better. Every cell of Tables 1-3 in the baseline and Perception-R1 rows is
transcribed; a table cell shows ``-`` only where the paper prints no number.

Source of every number: the tables as the authors published them with the code,
github.com/linkangheng/PR1 at 48d5558, ``assets/grounding_results.jpg`` (Table 1),
``assets/ocr_results.jpg`` (Table 2), ``assets/counting_detection_results.jpg`` (Table 3 a/b;
its number is the one left between Tables 2 and 4, the image shows only the sub-captions).
"""

from __future__ import annotations

from dataclasses import dataclass

CITATION = "Perception-R1 (Yu et al., arXiv 2504.07954)"
LOWER_IS_BETTER = frozenset({"edit_distance"})
# Table 1's "Avg" columns: the mean of the three accuracies (checked on every row of the
# table, e.g. Qwen2-VL RefCOCO val (86.8 + 77.2 + 33.0) / 3 = 65.7).
AVERAGES = {"Acc@avg": ("Acc@0.5", "Acc@0.75", "Acc@0.95")}
GROUNDING = ("Acc@0.5", "Acc@0.75", "Acc@0.95", "Acc@avg")
OCR = ("edit_distance", "F1", "precision", "recall", "BLEU", "METEOR")


@dataclass(frozen=True)
class PaperTable:
    """One table of the paper: which benchmarks and metrics it holds, against which base model."""

    number: int
    title: str
    baseline: str
    benchmarks: tuple[str, ...]
    metrics: dict  # benchmark -> the metric keys of its metrics.json shown for it


TABLES = (
    PaperTable(
        1,
        "Visual grounding, Acc@t (IoU >= t) and their average",
        "Qwen2-VL-2B-Instruct",
        ("refcoco", "refcoco+", "refcocog"),
        {b: GROUNDING for b in ("refcoco", "refcoco+", "refcocog")},
    ),
    PaperTable(2, "Page OCR", "Qwen2-VL-2B-Instruct", ("page_ocr",), {"page_ocr": OCR}),
    PaperTable(
        3,
        "(a) Counting (exact-match accuracy), (b) COCO detection",
        "Qwen2-VL-2B-Instruct (counting), Qwen2.5-VL-3B-Instruct (detection)",
        ("pixmo_count", "coco"),
        {"pixmo_count": ("Acc",), "coco": ("AP", "AP50", "AP75")},
    ),
)


def _rows(benchmark: str, metrics: tuple, splits: tuple, baseline: tuple, ours: tuple) -> dict:
    """A table block as printed: for each metric in turn, one value per split."""
    keys = [(benchmark, s, m) for m in metrics for s in splits]
    return dict(zip(keys, zip(baseline, ours, strict=True), strict=True))


# (benchmark, split, metric) -> (baseline, Perception-R1), in %: the Qwen2-VL / Qwen2.5-VL row
# and the Perception-R1 row of each table, read left to right.
NUMBERS = {
    # Table 1: val testA testB (val test for RefCOCOg) at @0.5, @0.75, @0.95, Avg.
    **_rows(
        "refcoco",
        GROUNDING,
        ("val", "testA", "testB"),
        (86.8, 89.6, 82.0, 77.2, 80.6, 70.1, 33.0, 35.7, 26.9, 65.7, 68.6, 59.7),
        (89.1, 91.4, 84.5, 79.5, 83.6, 72.4, 35.0, 38.5, 28.8, 67.9, 71.2, 61.9),
    ),
    **_rows(
        "refcoco+",
        GROUNDING,
        ("val", "testA", "testB"),
        (77.1, 82.5, 70.1, 68.7, 73.8, 60.0, 29.4, 32.3, 23.0, 58.4, 62.9, 51.0),
        (81.7, 86.8, 74.3, 73.6, 79.3, 64.2, 32.6, 36.9, 26.7, 62.6, 67.7, 55.1),
    ),
    **_rows(
        "refcocog",
        GROUNDING,
        ("val", "test"),
        (83.3, 83.1, 72.7, 73.0, 28.9, 27.9, 61.6, 61.3),
        (85.7, 85.4, 75.7, 76.0, 32.1, 33.1, 64.5, 64.8),
    ),
    # Table 2: en zh for edit distance, F1, precision, recall, BLEU, METEOR. (The project's
    # facts.md had Perception-R1 en edit distance "2.8-3.5" and BLEU 96.6; the table prints
    # 3.5 and 96.7, and no other readable version of the paper gives other values.)
    **_rows(
        "page_ocr",
        OCR,
        ("en", "zh"),
        (8.0, 10.0, 94.4, 93.0, 96.9, 96.1, 93.0, 90.5, 90.9, 78.0, 94.1, 87.2),
        (3.5, 9.0, 98.2, 94.4, 98.6, 96.3, 97.8, 92.7, 96.7, 74.6, 98.1, 88.9),
    ),
    # Table 3 (a): Pixmo val, test; (b): COCO val2017 AP, AP50, AP75.
    **_rows("pixmo_count", ("Acc",), ("val", "test"), (60.2, 50.5), (78.1, 75.6)),
    **_rows("coco", ("AP", "AP50", "AP75"), ("val2017",), (16.1, 23.7, 16.7), (31.9, 46.7, 33.4)),
}


def paper_values(benchmark: str, split: str, metric: str) -> tuple:
    """``(baseline, perception_r1)`` for a row of the table, ``(None, None)`` if the paper has none.

    >>> paper_values("refcoco", "testA", "Acc@0.5"), paper_values("page_ocr", "zh", "BLEU")
    ((89.6, 91.4), (78.0, 74.6))
    >>> paper_values("refcoco", "testA", "mIoU")
    (None, None)
    """
    return NUMBERS.get((benchmark, split, metric), (None, None))


def metric_value(metrics: dict, metric: str):
    """A split's value of ``metric``: from its metrics.json, or the mean of an average's parts.

    None when the metric (or one of its parts) was not computed.

    >>> metric_value({"Acc@0.5": 1.0, "Acc@0.75": 0.5, "Acc@0.95": 0.0}, "Acc@avg")
    0.5
    >>> metric_value({"Acc@0.5": 0.9}, "Acc@avg"), metric_value({"AP": 0.3}, "AP")
    (None, 0.3)
    """
    if metric not in AVERAGES:
        return metrics.get(metric)
    parts = [metrics.get(p) for p in AVERAGES[metric]]
    return None if None in parts else sum(parts) / len(parts)


def format_paper(value) -> str:
    """A paper value as printed: one decimal, ``-`` when the paper gives none.

    >>> format_paper(86.8), format_paper(None)
    ('86.8', '-')
    """
    return "-" if value is None else f"{value:.1f}"
