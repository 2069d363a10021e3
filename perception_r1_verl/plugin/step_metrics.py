"""Reward components in verl's *training-step* metrics (``perception/<key>/mean``) and in
the v1 trainer's rollout dump.

verl 0.9.1 logs ``reward_extra_info`` only for validation; a training step gets
``critic/score/*`` and nothing else, and 0.9.1 has no metric hook or callback. So the
``verl.plugins`` entry point (imported by ``import verl`` in every process) installs
wrappers, each applied when verl first imports the module that defines it. Two for the
metrics:

- v1 trainer (``trainer.use_v1=true``, the default): ``PPOTrainer._compute_metrics`` in
  ``verl.trainer.ppo.v1.trainer_base``; after verl's own metrics it reads the batch's
  ``data_source`` and ``extra_fields`` (which hold ``reward_extra_info``) from the
  TransferQueue, before the step clears it;
- legacy ``RayPPOTrainer``: ``verl.trainer.ppo.metric_utils.compute_data_metrics``, whose
  batch carries ``reward_extra_info`` as ``non_tensor_batch`` columns. It is wrapped
  before the trainers bind it with ``from ... import``.

Each logs, for every key of ``rewards.component_keys()`` plus the manager's counters that
has a value in the batch (``None`` cells skipped), ``perception/<key>/mean`` over the batch
and ``perception/<data_source>/<key>/mean`` per data source.

A third, in the same ``verl.trainer.ppo.v1.trainer_base``, fills in the v1 rollout dump
(``trainer.rollout_data_dir``): verl's ``PPOTrainer._log_rollout_data`` writes only
``uid`` beside the text and the score, so the wrapper reads the batch's ``data_source``,
``extra_info`` and ``extra_fields`` from the TransferQueue and adds, per line, ``data_source``, ``index`` and ``task`` (of the row's
``extra_info``), ``is_padding`` and every ``reward_extra_info`` key (the manager's
components, ``None`` where one does not apply, and counters), in the order of verl's
``uid`` column. Columns verl writes itself (``score`` among them) are kept as verl wrote
them; a padding sample (``is_padding`` true) gets ``None`` in every added column.

Both metric wrappers also log the learning signal of the step per data source
(``perception/<data_source>/groups/*``, ``score/<bucket>/mean``, ``truncated``:
``rewards.signal``), grouped by verl's ``uid``, and warn when a source's zero-signal share
stays above ``SIGNAL_WARN_SHARE`` for ``SIGNAL_WARN_STEPS`` steps.

Set ``PERCEPTION_STEP_METRICS=0`` to install nothing. A wrapper that cannot install, or
fails in a step, logs a WARNING and leaves verl's own metrics and dump untouched: it never
stops training.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import orjson

from perception_r1_verl import rewards
from perception_r1_verl.plugin.import_hooks import install_patches, patch_applier
from perception_r1_verl.rewards import COUNTERS, METRIC_PREFIX
from perception_r1_verl.rewards.signal import ZeroSignalWatch, difficulty_bucket, signal_metrics

logger = logging.getLogger(__name__)


ENV_VAR = "PERCEPTION_STEP_METRICS"
PREFIX = METRIC_PREFIX
_MARK = "_perception_step_metrics"
# Trainer modules that bind compute_data_metrics by name at import.
_BINDERS = (
    "verl.trainer.ppo.ray_trainer",
    "verl.experimental.separation.ray_trainer",
    "verl.trainer.ppo.v1.trainer_base",
)


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


# A stall worth a console line: 90 % of a source's groups flat for 5 steps in a row.
SIGNAL_WARN_SHARE = 0.9
SIGNAL_WARN_STEPS = 5
_watch = ZeroSignalWatch(SIGNAL_WARN_SHARE, SIGNAL_WARN_STEPS)


@functools.lru_cache(maxsize=65536)
def _task_and_bucket(data_source: str, ground_truth: str) -> tuple[str | None, str | None]:
    """The task of a source and the difficulty bucket of a ground truth (cached: the same
    prompt comes back ``n`` times a step and again each epoch)."""
    try:
        task = rewards.task_of(data_source)
    except ValueError:  # not a perception row
        return None, None
    try:
        return task, difficulty_bucket(task, orjson.loads(ground_truth))
    except (ValueError, KeyError, TypeError):  # a bad ground truth (the reward reports it): no bucket
        return task, None


def step_signal(columns: Mapping[str, Sequence], uids, sources, ground_truths, truncated) -> dict[str, float]:
    """:func:`rewards.signal.signal_metrics` of a step's perception rows (those with a
    ``score``), and a WARNING per source whose zero-signal share has stayed high.

    >>> m = step_signal({"score": [0.0, 0.0, 2.0, 1.0]}, ["a", "a", "b", "b"], ["refcoco"] * 4,
    ...                 ['{"bbox_2d": [0, 0, 9, 9]}'] * 4, [False] * 4)
    >>> m["perception/refcoco/groups/zero_signal"], m["perception/refcoco/score/area<=0.0033/mean"]
    (0.5, 0.75)
    """
    scores = columns.get("score")
    if scores is None or uids is None:
        return {}
    rows = [i for i, value in enumerate(scores) if value is not None]
    truth = [_task_and_bucket(str(sources[i]), _text(ground_truths[i])) for i in rows]
    rows = [i for i, (task, _) in zip(rows, truth, strict=True) if task is not None]
    truth = [t for t in truth if t[0] is not None]
    if not rows:
        return {}
    errors = np.zeros(len(rows), dtype=bool)
    for key in COUNTERS:
        if columns.get(key) is not None:
            errors |= np.asarray([bool(columns[key][i]) for i in rows])
    row_sources = [str(sources[i]) for i in rows]
    metrics = signal_metrics(
        [scores[i] for i in rows],
        [uids[i] for i in rows],
        row_sources,
        errors,
        [bucket for _, bucket in truth],
        None if truncated is None else [truncated[i] for i in rows],
        {s: rewards.max_score(t) for s, (t, _) in zip(row_sources, truth, strict=True)},
        PREFIX,
    )
    for key in _watch.update(metrics):
        logger.warning(
            "%s above %.0f %% for %d steps: most groups score alike, GRPO gets little signal "
            "(see docs/training.md, FILTER_GROUPS)",
            key,
            100 * SIGNAL_WARN_SHARE,
            SIGNAL_WARN_STEPS,
        )
    return metrics


def _text(ground_truth) -> str:
    """A row's ground truth as its JSON text: verl passes ``reward_model`` (a dict) or the string."""
    if isinstance(ground_truth, Mapping):
        ground_truth = ground_truth.get("ground_truth")
    return ground_truth if isinstance(ground_truth, str) else orjson.dumps(ground_truth).decode()


def rows_to_columns(extra_fields: Sequence) -> dict[str, list]:
    """Per-key columns from the v1 trainer's per-sample ``extra_fields`` dicts.

    >>> rows_to_columns([{"reward_extra_info": {"iou": 0.5}}, {}, None])
    {'iou': [0.5, None, None]}
    """
    infos = [(row.get("reward_extra_info") or {}) if isinstance(row, Mapping) else {} for row in extra_fields]
    keys = dict.fromkeys(key for info in infos for key in info)
    return {key: [info.get(key) for info in infos] for key in keys}


_failed: set[str] = set()


def _warn_failed(name: str, consequence: str) -> None:
    """Log the exception being handled in wrapper ``name``: the cause repeats every step,
    so the traceback once, then a DEBUG line."""
    first = name not in _failed
    _failed.add(name)
    logger.log(
        logging.WARNING if first else logging.DEBUG,
        "perception step metrics: %s failed; %s",
        name,
        consequence,
        exc_info=first,
    )


def _adding_metrics(original: Callable, add: Callable) -> Callable:
    """``original``, then ``add(result, *args, **kwargs)``; a failing ``add`` only warns."""

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        try:
            add(result, *args, **kwargs)
        except Exception:
            _warn_failed(original.__qualname__, "this step logs no perception/* metrics")
        return result

    setattr(wrapper, _MARK, True)
    return wrapper


def wrap_compute_data_metrics(compute_data_metrics: Callable) -> Callable:
    """``compute_data_metrics`` that adds the reward components of ``batch.non_tensor_batch``."""

    def add(metrics, batch, *args, **kwargs):
        columns = batch.non_tensor_batch
        metrics.update(reward_metrics(columns, columns.get("data_source")))
        if "uid" in columns and "reward_model" in columns:
            lengths = batch.batch["response_mask"].sum(-1)
            truncated = (lengths >= batch.batch["responses"].shape[-1]).tolist()
            metrics.update(
                step_signal(columns, columns["uid"], columns["data_source"], columns["reward_model"], truncated)
            )

    return _adding_metrics(compute_data_metrics, add)


def _as_list(column) -> list:
    """A non-tensor column as a list: TransferQueue returns a NonTensorStack, a tensordict
    ``LinkedList`` or a numpy array depending on its backend."""
    return column.tolist() if hasattr(column, "tolist") else list(column)


def v1_batch_metrics(tq, batch, max_response_length: int | None = None) -> dict[str, float]:
    """Reward and signal metrics of a v1 ``KVBatchMeta`` batch, read from the TransferQueue
    ``tq`` (``truncated`` only with ``max_response_length``).

    Padding rows (tag ``is_padding``) are left out, as in verl's own step metrics.
    """
    fields = ["data_source", "extra_fields", "uid", "reward_model", "responses"]
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
    keep = np.array([not (tag or {}).get("is_padding", False) for tag in batch.tags or [{}] * len(batch.keys)])
    lengths = data["responses"].offsets().diff().numpy()
    kept = {f: [v for v, k in zip(_as_list(data[f]), keep, strict=True) if k] for f in fields[:4]}
    columns = rows_to_columns(kept["extra_fields"])
    truncated = None if max_response_length is None else (lengths[keep] >= max_response_length).tolist()
    return {
        **reward_metrics(columns, kept["data_source"]),
        **step_signal(columns, kept["uid"], kept["data_source"], kept["reward_model"], truncated),
    }


def wrap_v1_compute_metrics(compute_metrics: Callable, tq) -> Callable:
    """``PPOTrainer._compute_metrics`` that adds the batch's reward components to ``metrics``."""

    def add(_, self, batch, metrics, *args, **kwargs):
        metrics.update(v1_batch_metrics(tq, batch, self.config.data.get("max_response_length")))

    return _adding_metrics(compute_metrics, add)


# The keys verl's _write_generations writes itself: an added column never replaces one.
_VERL_DUMP_KEYS = frozenset({"input", "output", "gts", "score", "step"})


def dump_row(data_source, extra_info, extra_fields, is_padding: bool) -> dict:
    """The columns one rollout adds to the v1 dump (``None`` for a padding sample, whose
    fields verl copied from another sample).

    >>> dump_row("refcoco", {"index": 3, "task": "grounding"}, {"reward_extra_info": {"score": 2.0, "iou": 1.0}}, False)
    {'data_source': 'refcoco', 'index': 3, 'task': 'grounding', 'is_padding': False, 'score': 2.0, 'iou': 1.0}
    >>> dump_row("refcoco", {"index": 3}, {"reward_extra_info": {"iou": 1.0}}, True)
    {'is_padding': True}
    """
    if is_padding:
        return {"is_padding": True}
    extra_info = extra_info if isinstance(extra_info, Mapping) else {}
    try:
        task = rewards.task_of(data_source, extra_info)
    except ValueError:  # not a perception row: no task to tell
        task = None
    info = extra_fields.get("reward_extra_info") if isinstance(extra_fields, Mapping) else None
    return {
        "data_source": data_source,
        "index": extra_info.get("index"),
        "task": task,
        "is_padding": False,
        **(info or {}),
    }


def v1_dump_columns(tq, batch) -> dict[str, dict]:
    """:func:`dump_row` of every sample of a v1 ``KVBatchMeta`` batch, by its key."""
    fields = ["data_source", "extra_info", "extra_fields"]
    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
    tags = batch.tags or [{}] * len(batch.keys)
    columns = zip(batch.keys, tags, *(_as_list(data[f]) for f in fields), strict=True)
    return {
        key: dump_row(source, info, extra, (tag or {}).get("is_padding", False))
        for key, tag, source, info, extra in columns
    }


def with_columns(reward_extra_infos_dict: Mapping[str, list], by_key: Mapping[str, dict]) -> dict[str, list]:
    """verl's dump columns plus the rows of ``by_key``, in the order of verl's ``uid`` column.

    >>> with_columns({"uid": ["b_0_0", "a_0_0"]}, {"a_0_0": {"iou": 1.0, "score": 2.0}, "b_0_0": {"is_padding": True}})
    {'uid': ['b_0_0', 'a_0_0'], 'is_padding': [True, None], 'iou': [None, 1.0]}
    """
    rows = [by_key[uid] for uid in reward_extra_infos_dict["uid"]]
    added = dict.fromkeys(
        k for row in rows for k in row if k not in reward_extra_infos_dict and k not in _VERL_DUMP_KEYS
    )
    return {**reward_extra_infos_dict, **{k: [row.get(k) for row in rows] for k in added}}


def wrap_v1_log_rollout_data(log_rollout_data: Callable, tq) -> Callable:
    """``PPOTrainer._log_rollout_data`` whose dump also carries :func:`v1_dump_columns`.

    verl sorts the rollouts and calls ``self._dump_generations`` with ``uid`` as the only
    extra column; for that one call the wrapper shadows ``_dump_generations`` on the
    instance to add the columns along verl's ``uid`` order (validation dumps, made
    elsewhere, are left alone).
    """
    name = log_rollout_data.__qualname__
    lost = "this step's rollout dump has only verl's own columns"

    @functools.wraps(log_rollout_data)
    def wrapper(self, batch, *args, **kwargs):
        try:
            by_key = v1_dump_columns(tq, batch)
        except Exception:
            _warn_failed(name, lost)
            return log_rollout_data(self, batch, *args, **kwargs)
        own = vars(self).get("_dump_generations")
        dump = self._dump_generations

        def dump_with_columns(*dump_args, **dump_kwargs):
            try:
                dump_kwargs["reward_extra_infos_dict"] = with_columns(dump_kwargs["reward_extra_infos_dict"], by_key)
            except Exception:
                _warn_failed(name, lost)
            return dump(*dump_args, **dump_kwargs)

        self._dump_generations = dump_with_columns
        try:
            return log_rollout_data(self, batch, *args, **kwargs)
        finally:
            if own is None:
                del self._dump_generations
            else:
                self._dump_generations = own

    setattr(wrapper, _MARK, True)
    return wrapper


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
    if not getattr(trainer._log_rollout_data, _MARK, False):
        trainer._log_rollout_data = wrap_v1_log_rollout_data(trainer._log_rollout_data, module.tq)


PATCHES: dict[str, Callable] = {
    "verl.trainer.ppo.metric_utils": patch_metric_utils,
    "verl.trainer.ppo.v1.trainer_base": patch_trainer_base,
}


_apply = patch_applier(
    PATCHES,
    "perception step metrics: cannot patch %s (verl's internals differ from 0.9.1?); "
    "training runs without its perception/* step metrics or rollout dump columns",
    logger,
)


def install() -> bool:
    """Install the wrappers (now, or when verl imports their modules); ``False`` if opted out."""
    return install_patches(PATCHES, _apply, ENV_VAR)
