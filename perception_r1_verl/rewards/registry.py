"""Task name -> reward class, the way verl registers reward managers."""

from __future__ import annotations

from ..registry import Registry

REWARDS = Registry("reward", noun="perception task")


def register(name: str):
    """Class decorator: make a reward class known under the task ``name``.

    A reward class has ``components`` (the keys it returns besides ``score``), a
    ``max_score`` property, ``prepare(ground_truth) -> truth`` (once per prompt),
    ``__call__(completion, truth, think, style) -> dict`` and
    ``render_answer(ground_truth, model_family, think) -> str``, the exact answer, which
    scores ``max_score``.
    """

    def decorator(cls):
        REWARDS.register(name)(cls)
        cls.task = name
        return cls

    return decorator


def get_reward_cls(name: str) -> type:
    return REWARDS.lookup(name)
