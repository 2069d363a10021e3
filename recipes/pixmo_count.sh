#!/usr/bin/env bash
# Perception-R1 counting: GRPO on PixMo-Count with Qwen2-VL-2B-Instruct.
#
#   bash recipes/pixmo_count.sh [hydra overrides...]
#   DATASET_ROOT=/data/pixmo_count bash recipes/pixmo_count.sh
#
# Paper settings (overrides built in perception_r1_verl/recipe.py, each deviation from
# verl's defaults commented there): GRPO, lr 1e-6, 8 rollouts, KL loss 0.04 (k3),
# temperature 1.0 / top_p 0.9 / top_k 50, max response 768, max prompt 2048, 1 epoch on
# a 10k-row subset (TRAIN_LIMIT), bf16, gradient checkpointing, colocated vLLM, rewards
# (format + count accuracy + point distance) from the `perception` manager.
set -euo pipefail
TASK=pixmo_count
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_recipe "$@"
