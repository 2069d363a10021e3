"""Training recipes: one task's verl config (or all four's, ``perception_mix``), checked on CPU, launched on GPUs.

The paper's settings are Hydra files, ``recipes/config/<task>.yaml`` over ``base.yaml`` over
verl 0.9.1's ``ppo_trainer``. ``bash recipes/<task>.sh [hydra overrides...]`` runs the
preflight, ``python -m perception_r1_verl.recipe <task> --config-dir recipes/config``:

1. prepares ``$DATA_DIR/<task>/{train,val}.parquet`` through ``perception-r1-prep <task>`` when
   they are missing, from ``$DATASET_ROOT`` if set, else from the offline sample (:mod:`.data`);
2. turns the environment into overrides (data files, model, GPUs, LoRA, ...: :mod:`.overrides`),
   composes the task's config with them and the user's as ``main_ppo`` composes it, and runs
   verl's ``validate_config`` on it (:mod:`.config`);
3. scores a few prepared rows through the ``perception`` reward manager, as verl loads it, with
   the ground-truth answer and an empty answer (:mod:`.reward_check`);
4. prints the launch command, ``python -m verl.trainer.main_ppo --config-path ... --config-name
   <task> <overrides>``, and tells the shell recipe whether to run it: with a CUDA GPU and
   ``DRY_RUN`` unset (:mod:`.main`).

Everything here runs on CPU; only the launch needs GPUs.
"""
