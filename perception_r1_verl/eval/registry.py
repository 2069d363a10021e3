"""Task name -> metric, the way the rewards register theirs (``rewards/registry.py``).

Look a task up through :mod:`.metrics`, which imports every task's module so that each
has registered.
"""

from __future__ import annotations

from ..registry import Registry
from .metric import Metric

METRICS = Registry("metric")


def register(task: str):
    """Class decorator: make an instance of a :class:`Metric` subclass ``task``'s metric."""

    def decorator(cls):
        cls.task = task
        METRICS.register(task)(cls())
        return cls

    return decorator


def get_metric(task: str) -> Metric:
    """The metric of ``task``; a ``ValueError`` naming the known tasks when it has none.

    >>> from perception_r1_verl.eval.metrics import get_metric
    >>> get_metric("counting").case_fields
    ('pred_count', 'gt_count')
    """
    return METRICS.lookup(task)
