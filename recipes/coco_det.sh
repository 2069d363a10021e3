#!/usr/bin/env bash
# Perception-R1 object detection: GRPO on COCO train2017 with Qwen2.5-VL-3B-Instruct.
#
#   bash recipes/coco_det.sh [hydra overrides...]                 # e.g. trainer.total_epochs=2
#   DATASET_ROOT=/data/coco bash recipes/coco_det.sh               # annotations/ + train2017/ + val2017/
#   CURRICULUM=1 bash recipes/coco_det.sh                          # easy-to-hard by object count
#
# Paper settings (overrides built in perception_r1_verl/recipe.py, each deviation from
# verl's defaults commented there): GRPO, lr 1e-6, 8 rollouts, KL loss 0.04 (k3),
# temperature 1.0 / top_p 0.9 / top_k 50, max response 2048, max prompt 2048, images up
# to 1M pixels, 1 epoch on all of train2017, bf16, gradient checkpointing, colocated
# vLLM, rewards (format + IoU + F1 + label accuracy) from the `perception` manager.
# Validation: VAL_LIMIT (500) val2017 images, greedy, every 50 steps.
set -euo pipefail
TASK=coco_det
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_recipe "$@"
