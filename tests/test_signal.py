"""rewards.signal and the step metrics' signal: groups by uid, error groups, absent sources,
difficulty buckets, the zero-signal warning."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from perception_r1_verl.plugin import step_metrics
from perception_r1_verl.rewards.signal import difficulty_bucket, group_stats, signal_metrics


def test_a_group_with_an_error_is_an_error_group_not_zero_signal():
    stats = group_stats(np.zeros(4), ["a", "a", "b", "b"], np.array([1, 0, 0, 0]), 2.0)
    assert stats["groups/error"] == 0.5
    assert stats["groups/zero_signal"] == stats["groups/all_zero"] == 0.5  # b only
    assert stats["groups/all_max"] == 0.0


def test_groups_are_found_by_uid_whatever_the_row_order():
    scores = np.array([2.0, 0.0, 2.0, 1.0])
    stats = group_stats(scores, ["a", "b", "a", "b"], np.zeros(4, dtype=bool), 2.0)
    assert stats == {
        "groups/zero_signal": 0.5,
        "groups/all_zero": 0.0,
        "groups/all_max": 0.5,
        "groups/error": 0.0,
        "groups/reward_std": 0.25,
    }


def test_a_source_absent_from_the_step_has_no_key():
    metrics = signal_metrics([1.0, 0.0], ["a", "a"], ["refcoco"] * 2, [0, 0], [None, None], None, {"refcoco": 2.0}, "p")
    assert {key.split("/")[1] for key in metrics} == {"refcoco"}
    assert "p/refcoco/truncated" not in metrics  # no length limit known: no share


@pytest.mark.parametrize(
    ("task", "truth", "bucket"),
    [
        ("detection", {"objects": [{"bbox_2d": [0, 0, 1, 1]}] * 3}, "objects<=3"),
        ("detection", {"objects": [{"bbox_2d": [0, 0, 1, 1]}] * 11}, "objects>10"),
        ("counting", {"count": 10}, "objects<=10"),
        ("grounding", {"bbox_2d": [0, 0, 10, 10], "frame": [1000, 1000]}, "area<=0.0033"),
        ("grounding", {"bbox_2d": [0, 0, 100, 100], "frame": [1000, 1000]}, "area<=0.03"),
        ("ocr", {"text": "x" * 1001}, "chars>1000"),
    ],
)
def test_difficulty_buckets_come_from_the_ground_truth(task, truth, bucket):
    assert difficulty_bucket(task, truth) == bucket


def test_a_bad_ground_truth_keeps_its_row_without_a_bucket():
    metrics = step_metrics.step_signal(
        {"score": [0.0, 0.0], "reward_error": [1, 0]}, ["u", "u"], ["coco"] * 2, ["{not json", "{not json"], None
    )
    assert metrics["perception/coco/groups/error"] == 1.0
    assert not any("/score/" in key for key in metrics)


def test_a_long_stretch_of_flat_groups_warns_once(caplog, monkeypatch):
    monkeypatch.setattr(step_metrics, "_watch", step_metrics.ZeroSignalWatch(0.9, 3))
    flat = ({"score": [0.0] * 4}, ["a", "a", "b", "b"], ["refcoco"] * 4, ['{"bbox_2d": [0, 0, 9, 9]}'] * 4, None)
    with caplog.at_level(logging.WARNING, logger=step_metrics.__name__):
        for _ in range(5):
            step_metrics.step_signal(*flat)
    warnings = [r for r in caplog.records if "zero_signal" in r.getMessage()]
    assert len(warnings) == 1 and "perception/refcoco/groups/zero_signal" in warnings[0].getMessage()
