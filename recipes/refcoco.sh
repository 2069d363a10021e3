#!/usr/bin/env bash
# Perception-R1 visual grounding: GRPO on RefCOCO with Qwen2-VL-2B-Instruct.
#
#   bash recipes/refcoco.sh [hydra overrides...]
#   DATASET_ROOT=/data/refcoco bash recipes/refcoco.sh
#
# Paper settings (overrides built in perception_r1_verl/recipe.py, each deviation from
# verl's defaults commented there): GRPO, lr 1e-6, 8 rollouts, KL loss 0.04 (k3),
# temperature 1.0 / top_p 0.9 / top_k 50, max response 768, max prompt 2048, 1 epoch on
# a 5k-row subset (TRAIN_LIMIT), bf16, gradient checkpointing, colocated vLLM, rewards
# (format + IoU) from the `perception` manager. Answers in Qwen2-VL's 0-1000 box tokens.
set -euo pipefail
TASK=refcoco
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_recipe "$@"
