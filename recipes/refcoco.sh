#!/usr/bin/env bash
# Perception-R1 visual grounding: GRPO on RefCOCO with Qwen2-VL-2B-Instruct.
#
#   bash recipes/refcoco.sh [hydra overrides...]
#   DATASET_ROOT=/data/refcoco bash recipes/refcoco.sh            # the refer toolkit's data/ folder
#
# The paper's settings, commented: recipes/config/refcoco.yaml (over base.yaml, over verl's
# ppo_trainer). Answers in Qwen2-VL's 0-1000 box tokens; 1 epoch on a 5k-row subset (TRAIN_LIMIT).
# Environment variables and plain Hydra overrides: docs/recipe_config.md.
set -euo pipefail
TASK=refcoco
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# On CPU: prepare $DATA_DIR/refcoco/ (perception-r1-prep refcoco, from $DATASET_ROOT or the offline
# sample), compose recipes/config/refcoco.yaml with the environment's OVERRIDES and "$@", run verl's
# validate_config, score reference answers through the reward manager, print the launch command.
preflight "$@"
# On GPUs (LAUNCH=1: a CUDA GPU, DRY_RUN unset): verl's own trainer with this task's config.
[[ $LAUNCH == 1 ]] || exit 0
exec "$PR1_PYTHON" -m verl.trainer.main_ppo --config-path "$RECIPE_CONFIG" --config-name "$TASK" "${OVERRIDES[@]}" "$@"
