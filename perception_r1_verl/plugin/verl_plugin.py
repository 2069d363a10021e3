"""``verl.plugins`` entry point: ``import verl`` imports this, registers ``perception`` and
installs the training-step reward metrics and rollout dump columns
(``perception_r1_verl.plugin.step_metrics``) and the narrow fixes of verl defects
(``perception_r1_verl.plugin.verl_patches``).

verl swallows a plugin's import error (logged at DEBUG) and only fails later with
"Reward manager is not registered" or "Unknown reward manager"; so the import failure is
logged here at ERROR with its cause. ``check_registered()`` (or
``python -m perception_r1_verl.plugin.verl_plugin``) is the preflight for launch scripts.
"""

from __future__ import annotations

import logging
import os
from importlib.metadata import entry_points

logger = logging.getLogger(__name__)
_NOT_REGISTERED = "perception-r1-verl: verl's reward manager 'perception' is not registered"

try:
    # Registers 'perception'. A plain module import: when the reward manager's own import
    # started this one (it imports verl), it is still half-initialised, and finishes later.
    import perception_r1_verl.plugin.reward_manager  # noqa: F401
except Exception:
    logger.error("perception-r1-verl: the verl reward manager 'perception' failed to load", exc_info=True)

try:
    # Reward components in the training-step metrics (opt out: PERCEPTION_STEP_METRICS=0).
    from perception_r1_verl.plugin import step_metrics

    step_metrics.install()
except Exception:
    logger.warning("perception-r1-verl: per-step reward metrics are not installed", exc_info=True)

try:
    # Fixes of verl defects that stop a run (opt out: PERCEPTION_VERL_PATCHES=0).
    from perception_r1_verl.plugin import verl_patches

    verl_patches.install()
except Exception:
    logger.warning("perception-r1-verl: the fixes of verl defects are not installed", exc_info=True)


def check_registered() -> None:
    """Raise ``RuntimeError`` naming the cause unless ``import verl`` registers ``perception``.

    Checks, in order: ``VERL_USE_EXTERNAL_PLUGINS`` lets verl load the plugin, the
    ``verl.plugins`` entry point is installed, and the reward manager imports and is in
    verl's registry.
    """
    policy = os.getenv("VERL_USE_EXTERNAL_PLUGINS", "auto").strip().lower()
    if policy == "none" or (policy != "auto" and "perception" not in {p.strip() for p in policy.split(",")}):
        raise RuntimeError(f"{_NOT_REGISTERED}: VERL_USE_EXTERNAL_PLUGINS={policy!r} keeps verl from loading it")
    if "perception" not in {ep.name for ep in entry_points(group="verl.plugins")}:
        raise RuntimeError(f"{_NOT_REGISTERED}: its 'verl.plugins' entry point is missing; reinstall the package")
    import verl  # noqa: F401  (loads the verl.plugins entry points)
    from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER

    if "perception" not in REWARD_MANAGER:
        try:
            import perception_r1_verl.plugin.reward_manager  # noqa: F401  (a failed import raises again)
        except Exception as exc:
            raise RuntimeError(f"{_NOT_REGISTERED}: importing it fails with {exc!r}") from exc
        raise RuntimeError(f"{_NOT_REGISTERED}: verl did not load the plugin")


if __name__ == "__main__":
    check_registered()
    print("perception-r1-verl: verl reward manager 'perception' is registered")
