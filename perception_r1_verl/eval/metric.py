"""The metric layer's contract: what a task's metric provides, and what scoring produces.

Each evaluation module (``grounding``, ``counting``, ``ocr``, ``detection``) subclasses
:class:`Metric` and registers it under its task name, as the rewards register theirs;
:mod:`.score`, :mod:`.report` and :mod:`.rollouts` look the task up (:mod:`.registry`,
loaded by :mod:`.metrics`) and never branch on its name.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import ClassVar

from ..frames import row_frame, to_pixels
from ..parsing import Answer, parse_answer
from .drawing import PRED_COLOR, draw_boxes, draw_points

NOT_PERCENT = frozenset({"MAE"})  # shown as is in the markdown; other metrics as %


@dataclass
class Scored:
    """Everything scoring produced, before it is written."""

    task: str
    metrics: dict
    records: list  # one dict per sample, in split order
    detections: list | None = None
    coco_summary: str | None = None
    ground_truth: object = None  # detection.GroundTruth for detection
    warnings: list = field(default_factory=list)


@dataclass(frozen=True)
class ScoreOptions:
    """The scoring options of ``perception-r1-eval score``; each metric reads its own."""

    annotations: object = None  # detection: a COCO instances.json (path or dict), else the split's
    zh_tokenizer: str = "auto"  # ocr: how Chinese is tokenised
    responses: dict = field(default_factory=dict)  # {index: response text}
    extras: dict = field(default_factory=dict)  # {index: the line's other fields}: finish_reason, logprobs


class Metric:
    """How one task's answers are evaluated (``metrics.json``) and shown (``report.html``).

    The default evaluates each sample alone: :meth:`sample` makes its record (its
    ``score`` ranks the report's cases), :meth:`summarize` the split's metrics, broken down
    by ``data_source/split`` in ``by_split`` when the split holds several. A subclass sets
    what differs; answers are free text unless ``boxes``.
    """

    task: ClassVar[str]
    boxes: ClassVar[bool] = False  # answers are boxes/points: "unparsable" counted, drawn on the image
    case_fields: ClassVar[tuple[str, ...]] = ()  # record fields in the header of a report case
    # fit(boxes, gt) of answer boxes in the row's frame, for the frame diagnosis (frame_check);
    # None: the task's answers are not boxes in a frame.
    frame_fit: ClassVar = None

    def sample(self, answer: Answer, gt: dict) -> dict:
        raise NotImplementedError(f"{type(self).__name__} needs sample() or its own evaluate()")

    def summarize(self, records: list[dict]) -> dict:
        raise NotImplementedError(f"{type(self).__name__} needs summarize() or its own evaluate()")

    def scorer(self, options: ScoreOptions, metrics: dict, warnings: list):
        """The per-sample function for this run; may record its settings in ``metrics``."""
        return self.sample

    def evaluate(self, samples: list, answers: list[Answer], metrics: dict, options: ScoreOptions) -> Scored:
        """``metrics`` (the answer counts so far) completed, with one record per sample."""
        warnings = []
        sample = self.scorer(options, metrics, warnings)
        records = [sample(a, s.ground_truth) for a, s in zip(answers, samples)]
        for r, s in zip(records, samples, strict=True):
            r["index"], r["group"] = s.index, s.group
        metrics.update(self.summarize(records))
        groups = sorted({s.group for s in samples})
        if len(groups) > 1:
            metrics["by_split"] = {}
            for g in groups:
                rs = [r for r in records if r["group"] == g]
                metrics["by_split"][g] = {"n_samples": len(rs), **self.summarize(rs)}
        return Scored(self.task, metrics, records, warnings=warnings)

    def n_truth(self, gt: dict) -> int:
        """Objects in a ground truth, for the rollout report's box-spam rule."""
        return 0

    def draw_truth(self, draw, gt: dict, to_image, width: int) -> None:
        """The ground truth on a rollout's image (green); ``to_image`` maps answer-frame coordinates."""

    def draw_case(self, draw, size, sample, record: dict, response: str, scored: Scored, width: int) -> None:
        """Ground truth and prediction of a report case on its image of ``size`` pixels."""

    def case_note(self, sample, record: dict, response: str) -> str:
        """The HTML under a report case's image."""
        return f'<div class="meta">response: {html.escape(response[:300])}</div>'

    def rollout_note(self, answer: Answer, gt: dict) -> str:
        """The HTML a rollout report case shows above the rollout's text."""
        return ""


class BoxMetric(Metric):
    """A metric of box or point answers in the row's answer frame: the report draws the
    ground truth (:meth:`draw_truth`) and then the prediction (:meth:`draw_prediction`)."""

    boxes = True

    def draw_case(self, draw, size, sample, record, response, scored, width):
        frame = row_frame(sample.ground_truth, sample.extra_info)

        def to_image(coords):
            return to_pixels(coords, frame, size)

        self.draw_truth(draw, sample.ground_truth, to_image, width)
        self.draw_prediction(draw, sample, record, response, to_image, width)

    def draw_prediction(self, draw, sample, record, response, to_image, width) -> None:
        """Every box and point of the response (red)."""
        answer = parse_answer(response, think=sample.think)
        draw_boxes(draw, [to_image(b) for b in answer.boxes.tolist()], PRED_COLOR, width)
        draw_points(draw, [to_image(p) for p in answer.points.tolist()], PRED_COLOR, 3 * width)


def format_value(name: str, value) -> str:
    """A metric as shown in tables: % with one decimal, ``NOT_PERCENT`` ones as is.

    >>> format_value("Acc", 0.8125), format_value("MAE", 1.5), format_value("AP", None)
    ('81.2', '1.500', 'n/a')
    """
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}" if name in NOT_PERCENT else f"{100 * value:.1f}"
    return str(value)


def metric_names(metrics: dict) -> list[str]:
    """The metric keys of a metrics dict (floats, or None for a metric not computable)."""
    return [k for k, v in metrics.items() if isinstance(v, float) or (v is None and k[0].isupper())]
