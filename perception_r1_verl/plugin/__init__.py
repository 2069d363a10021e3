"""The verl boundary: every module here imports verl (or wraps it), the rest of the package
never needs it.

``verl_plugin`` is the ``verl.plugins`` entry point; it registers the reward manager
(``reward_manager``), installs the training-step metrics (``step_metrics``) and the narrow
fixes of verl defects (``verl_patches``), both through ``import_hooks``; ``curriculum`` is
the detection curriculum as a verl dataset (``data.custom_cls``).
"""
