"""verl 0.9.1's sync trainer, also logging the reward components at every step.

verl 0.9.1's training steps log only the total reward (``critic/score/*``); the
components that the ``perception`` manager returns in ``reward_extra_info`` reach only the
validation metrics. This trainer adds, at every step, ``reward/<component>/{mean,max,min}``
over the step's responses (components that are ``None``, i.e. of another task, are left
out). Everything else is ``PPOTrainerSync``.

Importing this module registers the class as verl's ``sync`` trainer (the default
``trainer.v1.trainer_mode``) in place of ``PPOTrainerSync``. It cannot take a name of its
own: verl keys its sync-only behaviour (replay buffer, prompt refill, checkpointed
prompts) on the mode's *name*, so any other name would run the asynchronous variants.
verl looks the trainer up inside its Ray task-runner actor, so the recipes make every Ray
process import this module through verl's own ``VERL_USE_EXTERNAL_MODULES``, set in the
job's Ray runtime environment. The v1 trainer needs ``transfer_queue`` (installed with
``verl[vllm]``); without it this module only defines :func:`reward_component_metrics`.
"""

from __future__ import annotations

from collections import defaultdict

TRAINER_MODE = "sync"


def reward_component_metrics(extra_fields: list) -> dict[str, float]:
    """Mean, max and min of each numeric ``reward_extra_info`` key over a step's responses.

    >>> reward_component_metrics([{"reward_extra_info": {"iou": 0.5, "f1": None}},
    ...                           {"reward_extra_info": {"iou": 1.0}}, {}])
    {'reward/iou/mean': 0.75, 'reward/iou/max': 1.0, 'reward/iou/min': 0.5}
    """
    values: dict[str, list[float]] = defaultdict(list)
    for fields in extra_fields:
        info = fields.get("reward_extra_info") if isinstance(fields, dict) else None
        for key, value in (info or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                values[key].append(float(value))
    metrics = {}
    for key, vals in values.items():
        metrics.update(
            {f"reward/{key}/mean": sum(vals) / len(vals), f"reward/{key}/max": max(vals), f"reward/{key}/min": min(vals)}
        )
    return metrics


try:
    import transfer_queue as tq
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
except ImportError:  # a CPU install without verl[vllm]: nothing to train with anyway
    pass
else:

    class PerceptionTrainerSync(PPOTrainerSync):
        """``PPOTrainerSync`` plus the per-step reward components."""

        def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
            super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
            # verl pads a step's batch to its GPUs with copies; they are not responses.
            keys = [key for key, tag in zip(batch.keys, batch.tags, strict=True) if not tag.get("is_padding", False)]
            if keys:
                data = tq.kv_batch_get(keys=keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
                metrics.update(reward_component_metrics(data["extra_fields"].tolist()))

    # Not register_trainer(): it refuses to replace a name that is taken.
    TRAINER_REGISTRY[TRAINER_MODE] = PerceptionTrainerSync
