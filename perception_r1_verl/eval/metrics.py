"""Every task's metric, registered: import this to look a task's metric up.

``get_metric(task)`` is the :class:`~.metric.Metric` that :mod:`.grounding`,
:mod:`.counting`, :mod:`.ocr` or :mod:`.detection` registered under that task name (a
further task registers its own with :func:`~.registry.register`; docs/adding_a_task.md).
"""

from __future__ import annotations

from . import counting, detection, grounding, ocr  # noqa: F401  (each registers its metric)
from .metric import Metric
from .registry import METRICS, get_metric, register

__all__ = ["METRICS", "Metric", "get_metric", "register"]
