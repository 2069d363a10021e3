"""Perception-R1 for verl: rule-based perception rewards, data converters, recipes, evaluation.

Importing this package (and ``perception_r1_verl.rewards``) needs neither torch nor verl,
so scoring stays cheap in every process; the verl reward manager lives in
``perception_r1_verl.plugin.verl_plugin`` and is loaded by ``import verl`` through the
``verl.plugins`` entry point.
"""

__version__ = "0.1.0"
