"""The paper's numbers the benchmark suite is compared with (Perception-R1, arXiv 2504.07954).

Tables 1-3 of the paper report, per benchmark split, the base model ("baseline") and the
model after Perception-R1's GRPO training: Table 1 visual grounding (Qwen2-VL-2B-Instruct),
Table 2 page OCR (Qwen2-VL-2B-Instruct), Table 3 counting (Qwen2-VL-2B-Instruct) and COCO
detection (Qwen2.5-VL-3B-Instruct). Table 4 (general VQA benchmarks) is outside the suite.
Values are in %, as printed; edit distance is lower-is-better. Only the values below are
transcribed; the table shows ``-`` for any other metric or split (the paper's @0.75/@0.95
and Chinese OCR columns, for instance).
"""

from __future__ import annotations

from dataclasses import dataclass

CITATION = "Perception-R1 (Yu et al., arXiv 2504.07954)"
LOWER_IS_BETTER = frozenset({"edit_distance"})


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
        "Visual grounding, Acc@0.5 (IoU >= 0.5)",
        "Qwen2-VL-2B-Instruct",
        ("refcoco", "refcoco+", "refcocog"),
        {b: ("Acc@0.5",) for b in ("refcoco", "refcoco+", "refcocog")},
    ),
    PaperTable(
        2, "Page OCR", "Qwen2-VL-2B-Instruct", ("page_ocr",), {"page_ocr": ("edit_distance", "F1", "BLEU", "METEOR")}
    ),
    PaperTable(
        3,
        "Counting (exact-match accuracy) and COCO detection",
        "Qwen2-VL-2B-Instruct (counting), Qwen2.5-VL-3B-Instruct (detection)",
        ("pixmo_count", "coco"),
        {"pixmo_count": ("Acc",), "coco": ("AP", "AP50", "AP75")},
    ),
)

# (benchmark, split, metric) -> (baseline, Perception-R1), in %. A pair stands for a range the
# paper's versions give (edit distance of Perception-R1 on English pages: 2.8 to 3.5).
NUMBERS = {
    ("refcoco", "val", "Acc@0.5"): (86.8, 89.1),
    ("refcoco", "testA", "Acc@0.5"): (89.6, 91.4),
    ("refcoco", "testB", "Acc@0.5"): (82.0, 84.5),
    ("refcoco+", "val", "Acc@0.5"): (77.1, 81.7),
    ("refcoco+", "testA", "Acc@0.5"): (82.5, 86.8),
    ("refcoco+", "testB", "Acc@0.5"): (70.1, 74.3),
    ("refcocog", "val", "Acc@0.5"): (83.3, 85.7),
    ("refcocog", "test", "Acc@0.5"): (83.1, 85.4),
    ("pixmo_count", "val", "Acc"): (60.2, 78.1),
    ("pixmo_count", "test", "Acc"): (50.5, 75.6),
    ("page_ocr", "en", "edit_distance"): (8.0, (2.8, 3.5)),
    ("page_ocr", "en", "F1"): (94.4, 98.2),
    ("page_ocr", "en", "BLEU"): (90.9, 96.6),
    ("page_ocr", "en", "METEOR"): (94.1, 98.1),
    ("coco", "val2017", "AP"): (16.1, 31.9),
    ("coco", "val2017", "AP50"): (23.7, 46.7),
    ("coco", "val2017", "AP75"): (16.7, 33.4),
}


def paper_values(benchmark: str, split: str, metric: str) -> tuple:
    """``(baseline, perception_r1)`` for a row of the table, ``(None, None)`` if not transcribed.

    >>> paper_values("refcoco", "testA", "Acc@0.5"), paper_values("refcoco", "testA", "mIoU")
    ((89.6, 91.4), (None, None))
    """
    return NUMBERS.get((benchmark, split, metric), (None, None))


def format_paper(value) -> str:
    """A paper value as printed: one decimal, a range as ``lo-hi``, ``-`` when absent.

    >>> format_paper(86.8), format_paper((2.8, 3.5)), format_paper(None)
    ('86.8', '2.8-3.5', '-')
    """
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return "-".join(f"{v:.1f}" for v in value)
    return f"{value:.1f}"
