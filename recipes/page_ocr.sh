#!/usr/bin/env bash
# Perception-R1 page OCR: GRPO on PageOCR with Qwen2-VL-2B-Instruct.
#
#   bash recipes/page_ocr.sh [hydra overrides...]
#   DATASET_ROOT=/data/page_ocr bash recipes/page_ocr.sh
#
# Paper settings (overrides built in perception_r1_verl/recipe.py, each deviation from
# verl's defaults commented there): GRPO, lr 1e-6, 8 rollouts, KL loss 0.04 (k3),
# temperature 1.0 / top_p 0.9 / top_k 50, max response 2048, max prompt 2048, 1 epoch on
# a 5k-row subset (TRAIN_LIMIT), bf16, gradient checkpointing, colocated vLLM, reward
# (format + normalised edit distance; the paper released none) from the `perception` manager.
set -euo pipefail
TASK=page_ocr
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_recipe "$@"
