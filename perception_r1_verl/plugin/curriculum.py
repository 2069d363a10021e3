"""The detection curriculum as a verl dataset: easy to hard by number of objects.

Perception-R1 trains detection from images with few objects to images with many, with
more rollouts for the hard ones. verl 0.9.1's extension points for that:

- ``data.custom_cls.{path,name}``: the dataset class the trainer builds for the train and
  the val files. verl 0.9.1 has no hook for the training sampler (``create_rl_sampler``
  is random or sequential), so this dataset puts its rows in curriculum order and
  ``data.shuffle=False`` makes verl read them in that order (and resume in it: the
  sequential sampler's position is part of verl's dataloader checkpoint);
- ``__rollout_n__``: a per-row field that verl's agent loop takes as the number of
  rollouts for that prompt instead of ``actor_rollout_ref.rollout.n``. GRPO groups by
  prompt, so groups of different sizes are fine. verl pads the step's batch with no-op
  samples to whole mini-batches of ``ppo_mini_batch_size x rollout.n`` responses, so a
  step with more rollouts makes more than one policy update.

Settings (``+data.curriculum.*``, set by ``CURRICULUM=1 bash recipes/coco_det.sh``):
``max_objects`` (ascending upper bounds of every stage but the last), ``rollout_n`` (one
per stage, ``len(max_objects) + 1``; empty: ``rollout.n`` everywhere) and ``seed`` (order
within a stage). The val files keep their order and ``val_kwargs.n``.
"""

from __future__ import annotations

import json

import numpy as np
from omegaconf import ListConfig
from verl.utils.dataset.rl_dataset import RLHFDataset

ROLLOUT_N_KEY = "__rollout_n__"


def object_count(ground_truth: str) -> int:
    """Number of objects in a detection ground truth (the contract's JSON).

    >>> object_count('{"objects": [{"bbox_2d": [0, 0, 1, 1], "label": "cat"}], "frame": [9, 9]}')
    1
    """
    return len(json.loads(ground_truth)["objects"])


def stages(counts, max_objects) -> np.ndarray:
    """The stage of each object count: 0 for counts <= max_objects[0], and so on.

    >>> stages([0, 3, 4, 10, 11, 50], [3, 10]).tolist()
    [0, 0, 1, 1, 2, 2]
    """
    bounds = np.asarray(max_objects, dtype=np.int64)
    if bounds.ndim != 1 or np.any(np.diff(bounds) <= 0):
        raise ValueError(f"curriculum max_objects must be strictly ascending, got {list(max_objects)}")
    return np.searchsorted(bounds, np.asarray(counts, dtype=np.int64), side="left")


def curriculum_order(stage: np.ndarray, seed: int) -> np.ndarray:
    """Row order: stage by stage, shuffled (reproducibly) within each stage.

    >>> order = curriculum_order(np.array([2, 0, 1, 0, 2]), seed=0)
    >>> np.array([2, 0, 1, 0, 2])[order].tolist()
    [0, 0, 1, 2, 2]
    """
    shuffle = np.random.default_rng(seed).permutation(len(stage))
    return np.lexsort((shuffle, stage))


def _files(files) -> list[str]:
    if files is None:
        return []
    return [str(f) for f in files] if isinstance(files, list | tuple | ListConfig) else [str(files)]


class CurriculumDataset(RLHFDataset):
    """``RLHFDataset`` whose training rows come easy to hard, with per-stage rollout counts."""

    def __init__(self, data_files, tokenizer, config, processor=None, max_samples: int = -1):
        files = _files(data_files)
        # verl builds the train and the val dataset from the same class and config.
        self.is_train = files == _files(config.get("train_files"))
        if self.is_train and files == _files(config.get("val_files")):
            raise ValueError("the detection curriculum needs data.train_files distinct from data.val_files")
        if self.is_train and config.get("shuffle", True):
            raise ValueError("the detection curriculum needs data.shuffle=False (verl would shuffle its order away)")
        options = config.get("curriculum") or {}
        self.max_objects = list(options.get("max_objects", []))
        self.stage_rollout_n = [int(n) for n in options.get("rollout_n", [])]
        if self.stage_rollout_n and len(self.stage_rollout_n) != len(self.max_objects) + 1:
            raise ValueError(
                f"data.curriculum.rollout_n needs {len(self.max_objects) + 1} values (one per stage), "
                f"got {self.stage_rollout_n}"
            )
        if any(n < 1 for n in self.stage_rollout_n):
            raise ValueError(f"data.curriculum.rollout_n must be positive, got {self.stage_rollout_n}")
        self.curriculum_seed = int(options.get("seed", config.get("seed") or 0))
        self.stage = np.zeros(0, dtype=np.int64)
        super().__init__(data_files, tokenizer, config, processor=processor, max_samples=max_samples)

    def _read_files_and_tokenize(self):
        # Also runs again when verl resumes a checkpoint; the seeded order is the same.
        super()._read_files_and_tokenize()
        if not self.is_train:
            return
        counts = []
        for i, reward_model in enumerate(self.dataframe["reward_model"]):
            try:
                counts.append(object_count(reward_model["ground_truth"]))
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(
                    f"curriculum: row {i} of {self.data_files} has no detection ground truth: {e!r}"
                ) from e
        stage = stages(counts, self.max_objects)
        order = curriculum_order(stage, self.curriculum_seed)
        self.dataframe = self.dataframe.select(order.tolist())
        self.stage = stage[order]
        sizes = np.bincount(self.stage, minlength=len(self.max_objects) + 1).tolist()
        print(f"curriculum: {len(order)} rows in stages of {sizes} (max objects {self.max_objects})")

    def __getitem__(self, item):
        row = super().__getitem__(item)
        if self.is_train and self.stage_rollout_n:
            row[ROLLOUT_N_KEY] = self.stage_rollout_n[int(self.stage[item])]
        return row
