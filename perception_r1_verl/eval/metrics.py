"""Every task's metric, registered: import this to look a task's metric up.

``get_metric(task)`` is the :class:`~.registry.Metric` that :mod:`.grounding`,
:mod:`.counting`, :mod:`.ocr` or :mod:`.detection` registered under that task name (a
further task registers its own with :func:`~.registry.register`; docs/adding_a_task.md).
"""

from __future__ import annotations

from . import counting, detection, grounding, ocr  # noqa: F401  (each registers its metric)
from .registry import METRICS, Metric, register

__all__ = ["METRICS", "Metric", "get_metric", "register"]


def get_metric(task: str) -> Metric:
    """The metric of ``task``; a ``ValueError`` naming the known tasks when it has none.

    >>> get_metric("counting").case_fields
    ('pred_count', 'gt_count')
    """
    return METRICS.lookup(task)
