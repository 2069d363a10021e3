#!/usr/bin/env bash
# Perception-R1 counting: GRPO on PixMo-Count with Qwen2-VL-2B-Instruct.
#
#   bash recipes/pixmo_count.sh [hydra overrides...]
#   DATASET_ROOT=/data/pixmo_count bash recipes/pixmo_count.sh    # {train,validation}.parquet + images/
#
# The paper's settings, commented: recipes/config/pixmo_count.yaml (over base.yaml, over verl's
# ppo_trainer). 1 epoch on a 10k-row subset (TRAIN_LIMIT).
# Environment variables and plain Hydra overrides: docs/recipe_config.md.
set -euo pipefail
TASK=pixmo_count
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# On CPU: prepare $DATA_DIR/pixmo_count/ (perception-r1-prep pixmo_count, from $DATASET_ROOT or the offline
# sample), compose recipes/config/pixmo_count.yaml with the environment's OVERRIDES and "$@", run verl's
# validate_config, score reference answers through the reward manager, print the launch command.
preflight "$@"
# On GPUs (LAUNCH=1: a CUDA GPU, DRY_RUN unset): verl's own trainer with this task's config.
[[ $LAUNCH == 1 ]] || exit 0
exec "$PR1_PYTHON" -m verl.trainer.main_ppo --config-path "$RECIPE_CONFIG" --config-name "$TASK" "${OVERRIDES[@]}" "$@"
