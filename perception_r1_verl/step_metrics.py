"""Reward components in verl's *training-step* metrics (``perception/<key>/mean``).

verl 0.9.1 logs ``reward_extra_info`` only for validation; a training step gets
``critic/score/*`` and nothing else, and 0.9.1 has no metric hook or callback. So the
``verl.plugins`` entry point (imported by ``import verl`` in every process) installs two
wrappers, each applied when verl first imports the module that defines it:

- v1 trainer (``trainer.use_v1=true``, the default): ``PPOTrainer._compute_metrics`` in
  ``verl.trainer.ppo.v1.trainer_base``; after verl's own metrics it reads the batch's
  ``data_source`` and ``extra_fields`` (which hold ``reward_extra_info``) from the
  TransferQueue, before the step clears it;
- legacy ``RayPPOTrainer``: ``verl.trainer.ppo.metric_utils.compute_data_metrics``, whose
  batch carries ``reward_extra_info`` as ``non_tensor_batch`` columns. It is wrapped
  before the trainers bind it with ``from ... import``.

Each logs, for every key of ``rewards.component_keys()`` plus the manager's counters that
has a value in the batch (``None`` cells skipped), ``perception/<key>/mean`` over the batch
and ``perception/<data_source>/<key>/mean`` per data source. Set
``PERCEPTION_STEP_METRICS=0`` to install nothing. A wrapper that cannot install, or fails
in a step, logs a WARNING and leaves verl's own metrics untouched: it never stops training.
"""

from __future__ import annotations

import functools
import importlib.abc
import logging
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

from perception_r1_verl import rewards

logger = logging.getLogger(__name__)

# Counters the reward manager adds to every reward_extra_info.
COUNTERS = ("reward_timeout", "reward_error")

ENV_VAR = "PERCEPTION_STEP_METRICS"
PREFIX = "perception"
_MARK = "_perception_step_metrics"
# Trainer modules that bind compute_data_metrics by name at import.
_BINDERS = ("verl.trainer.ppo.ray_trainer", "verl.experimental.separation.ray_trainer", "verl.trainer.ppo.v1.trainer_base")


def metric_keys() -> tuple[str, ...]:
    """The reward_extra_info keys that are logged: every component, ``score``, the counters."""
    return (*rewards.component_keys(), *COUNTERS)


def reward_metrics(columns: Mapping[str, Sequence], data_sources: Sequence | None = None) -> dict[str, float]:
    """Means of the known reward columns, over the batch and per data source.

    ``columns`` maps a reward_extra_info key to one value per sample (``None`` where the
    component does not apply); keys that are not reward components are ignored.

    >>> reward_metrics({"iou": [0.5, None, 1.0], "f1": [None, 0.25, None], "acc": [1, 1, 1]},
    ...                ["refcoco", "coco", "refcoco"])
    {'perception/f1/mean': 0.25, 'perception/coco/f1/mean': 0.25, 'perception/iou/mean': 0.75, 'perception/refcoco/iou/mean': 0.75}
    """
    metrics = {}
    for key in metric_keys():
        column = columns.get(key)
        if column is None:
            continue
        total, by_source = [], defaultdict(list)
        for i, value in enumerate(column):
            if value is None:
                continue
            total.append(float(value))
            if data_sources is not None:
                by_source[str(data_sources[i])].append(float(value))
        if total:
            metrics[f"{PREFIX}/{key}/mean"] = sum(total) / len(total)
        for source, values in by_source.items():
            metrics[f"{PREFIX}/{source}/{key}/mean"] = sum(values) / len(values)
    return metrics


def rows_to_columns(extra_fields: Sequence) -> dict[str, list]:
    """Per-key columns from the v1 trainer's per-sample ``extra_fields`` dicts.

    >>> rows_to_columns([{"reward_extra_info": {"iou": 0.5}}, {}, None])
    {'iou': [0.5, None, None]}
    """
    infos = [(row.get("reward_extra_info") or {}) if isinstance(row, Mapping) else {} for row in extra_fields]
    keys = dict.fromkeys(key for info in infos for key in info)
    return {key: [info.get(key) for info in infos] for key in keys}


_failed: set[str] = set()


def _adding_metrics(original: Callable, add: Callable) -> Callable:
    """``original``, then ``add(result, *args, **kwargs)``; a failing ``add`` only warns."""

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        try:
            add(result, *args, **kwargs)
        except Exception:
            # The cause repeats every step: the traceback once, then a DEBUG line.
            first = original.__qualname__ not in _failed
            _failed.add(original.__qualname__)
            logger.log(
                logging.WARNING if first else logging.DEBUG,
                "perception step metrics: %s failed; this step logs no perception/* metrics",
                original.__qualname__,
                exc_info=first,
            )
        return result

    setattr(wrapper, _MARK, True)
    return wrapper


def wrap_compute_data_metrics(compute_data_metrics: Callable) -> Callable:
    """``compute_data_metrics`` that adds the reward components of ``batch.non_tensor_batch``."""

    def add(metrics, batch, *args, **kwargs):
        columns = batch.non_tensor_batch
        metrics.update(reward_metrics(columns, columns.get("data_source")))

    return _adding_metrics(compute_data_metrics, add)


def _as_list(column) -> list:
    """A non-tensor column as a list: TransferQueue returns a NonTensorStack, a tensordict
    ``LinkedList`` or a numpy array depending on its backend."""
    return column.tolist() if hasattr(column, "tolist") else list(column)


def v1_batch_metrics(tq, batch) -> dict[str, float]:
    """Reward metrics of a v1 ``KVBatchMeta`` batch, read from the TransferQueue ``tq``.

    Padding rows (tag ``is_padding``) are left out, as in verl's own step metrics.
    """
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["data_source", "extra_fields"])
    keep = [not (tag or {}).get("is_padding", False) for tag in batch.tags or [{}] * len(batch.keys)]
    sources = [s for s, k in zip(_as_list(data["data_source"]), keep, strict=True) if k]
    rows = [r for r, k in zip(_as_list(data["extra_fields"]), keep, strict=True) if k]
    return reward_metrics(rows_to_columns(rows), sources)


def wrap_v1_compute_metrics(compute_metrics: Callable, tq) -> Callable:
    """``PPOTrainer._compute_metrics`` that adds the batch's reward components to ``metrics``."""

    def add(_, self, batch, metrics, *args, **kwargs):
        metrics.update(v1_batch_metrics(tq, batch))

    return _adding_metrics(compute_metrics, add)


def patch_metric_utils(module) -> None:
    original = module.compute_data_metrics
    if getattr(original, _MARK, False):
        return
    module.compute_data_metrics = wrapped = wrap_compute_data_metrics(original)
    # Only reached when a trainer was imported before verl loaded the plugin.
    for name in _BINDERS:
        binder = sys.modules.get(name)
        if getattr(binder, "compute_data_metrics", None) is original:
            binder.compute_data_metrics = wrapped


def patch_trainer_base(module) -> None:
    trainer = module.PPOTrainer
    if not getattr(trainer._compute_metrics, _MARK, False):
        trainer._compute_metrics = wrap_v1_compute_metrics(trainer._compute_metrics, module.tq)


PATCHES: dict[str, Callable] = {
    "verl.trainer.ppo.metric_utils": patch_metric_utils,
    "verl.trainer.ppo.v1.trainer_base": patch_trainer_base,
}


def _apply(name: str, module) -> None:
    try:
        PATCHES[name](module)
    except Exception:
        logger.warning(
            "perception step metrics: cannot patch %s (verl's internals differ from 0.9.1?); "
            "training runs without perception/* step metrics",
            name,
            exc_info=True,
        )


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches a module of ``PATCHES`` right after it executes, before any importer binds names."""

    def find_spec(self, name, path=None, target=None):
        if name not in PATCHES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _apply(name, module)

        spec.loader.exec_module = exec_and_patch  # a fresh loader per spec: only this import sees it
        return spec


def install() -> bool:
    """Install the wrappers (now, or when verl imports their modules); ``False`` if opted out."""
    if os.getenv(ENV_VAR, "1").strip().lower() in {"0", "false", "no", "off"}:
        return False
    for name in PATCHES:
        if name in sys.modules:
            _apply(name, sys.modules[name])
    if not any(isinstance(finder, _PatchOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())
    return True
