"""Task name -> reward class, the way verl registers reward managers."""

from __future__ import annotations

REWARDS: dict[str, type] = {}


def register(name: str):
    """Class decorator: make a reward class known under the task ``name``."""

    def decorator(cls):
        if REWARDS.get(name, cls) is not cls:
            raise ValueError(f"task {name!r} already has reward {REWARDS[name]}")
        cls.task = name
        REWARDS[name] = cls
        return cls

    return decorator


def get_reward_cls(name: str) -> type:
    if name not in REWARDS:
        raise ValueError(f"unknown perception task {name!r}; known: {sorted(REWARDS)}")
    return REWARDS[name]
