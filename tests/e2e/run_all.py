"""The end-to-end CPU run behind scripts/e2e.sh: four verl launches, three merges and evaluations.

    python tests/e2e/run_all.py OUT_DIR      (in scripts/e2e.sh's venv)

1. the miniature (tests/e2e/miniature.py): a small Qwen2-VL fine-tuned on exact answers,
   then GRPO on grounding through refcoco.sh's launch (validation, every per-step reward
   metric, rollouts rescored, non-zero advantages, checkpoints), merged and evaluated
   beside its SFT start on a held-out split: GRPO must beat SFT by more than the seeds'
   noise, and the reward must rise; then relaunched from its step-8 checkpoint with
   ``trainer.resume_mode=auto``: the same rows as the uninterrupted run at steps 9-10, and
   its metrics file continues the first run's; ``perception-r1-eval curves`` draws it;
2. coco_det with ``CURRICULUM=1`` (tiny Qwen2.5-VL): a step mixing rollout counts;
3. perception_mix with ``LORA_RANK=8`` and ``FILTER_GROUPS=1`` (tiny Qwen2-VL): the four
   tasks in one run, a step where flat groups were evicted and refilled, LoRA
   adapters trained by verl's FSDP LoRA and served by vLLM, box tokens through the real
   decode path; validation and per-step metrics per data source; its step-2 checkpoint
   merged, ``perception-r1-eval generate --backend vllm`` (the adapter folded in) and
   ``score`` on refcoco's val split.

Every launch runs 2 dataloader workers and must end without a killed worker.

Prints each stage's time, each run's timing_s/step and the reward's own cost; exits
non-zero on any failure, naming the launch and the cause.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

import check  # noqa: E402
import miniature  # noqa: E402
import tiny_models  # noqa: E402
from launch import ENV, launch  # noqa: E402

# 1 prompt of 1 object, then 7 of 2-4 objects in the sample's first 8 rows: step 1 mixes
# __rollout_n__ 2 and 3. (Stage bounds for the offline sample, not the recipe's.)
CURRICULUM = [
    "data.train_batch_size=8",
    "actor_rollout_ref.rollout.n=2",
    "data.curriculum.max_objects=[0,1]",
    "data.curriculum.rollout_n=[2,2,3]",
    # verl pads the step to whole mini-batches with image-less samples at its end; micro-batches
    # of 2 in verl's order (no balancing) leave some holding padding only, which verl 0.9.1's
    # dummy-visual branch cannot run: this exercises the plugin's fix (verl_patches.py).
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
    "trainer.balance_batch=False",
]


MIX = "refcoco:2,pixmo_count:2,page_ocr:2,coco_det:2"


def train_rows(data_dir: Path, task: str) -> list[dict]:
    """data_source and extra_info of the recipe's prepared training rows (a mix: every task's)."""
    files = sorted((data_dir / task).rglob("train.parquet"))
    assert files, f"no prepared training rows under {data_dir / task}"
    return [row for f in files for row in pq.read_table(f, columns=["data_source", "extra_info"]).to_pylist()]


def val_rows(data_dir: Path, task: str) -> int:
    return pq.read_metadata(data_dir / task / "sample" / "val.parquet").num_rows


class Runner:
    def __init__(self, out: Path):
        self.out = out
        self.models = out / "models"
        self.data = out / "data"
        self.report: list[str] = []
        self.stages: dict[str, float] = {}
        self._since = time.monotonic()

    def stage(self, name: str) -> None:
        """Print and keep the time since the last stage ended."""
        now = time.monotonic()
        self.stages[name] = now - self._since
        self._since = now
        print(f"[e2e] stage {name}: {self.stages[name]:.0f} s", flush=True)

    def train(self, name: str, task: str, model: str, steps: list[int], extra=(), env=None, validate=True):
        """Launch a tiny model of ``models/``; see :meth:`launch_checked`."""
        env = {"MODEL_PATH": str(self.models / model), "DATA_DIR": str(self.data), **(env or {})}
        return self.launch_checked(self.out / "runs" / name, task, list(extra), env, steps, validate)

    def launch_checked(self, run_dir: Path, task: str, extra: list[str], env: dict, steps: list[int], validate=True):
        """Launch, then check steps, per-step metrics, rescored rollouts; returns the steps' metrics."""
        name, start = run_dir.name, time.monotonic()
        code = launch(run_dir, task, extra, env)
        wall = time.monotonic() - start
        assert code == 0, f"{name}: verl exited {code}; cause above, whole log in {run_dir / 'console.log'}"
        check.check_clean_exit(run_dir)
        rows = train_rows(Path(env["DATA_DIR"]), task)
        sources = {row["data_source"]: row["extra_info"]["task"] for row in rows}
        metrics = check.check_steps(run_dir, sources, steps)
        check.check_weight_sync(metrics)
        if validate:
            check.check_validation(run_dir, sources)
        infos = {(row["data_source"], row["extra_info"]["index"]): row["extra_info"] for row in rows}
        rescoring = check.check_rescored(run_dir, steps, infos)
        for step in steps:
            m = metrics[step]
            self.report.append(
                f"{name} step {step}: timing_s/step {m['timing_s/step']:.1f}, timing_s/gen {m['timing_s/gen']:.1f}, "
                f"rollout/trainer probability correlation {m['training/rollout_actor_probs_pearson_corr']:.2f}, "
                f"rescoring its {len(check.rollout_rows(run_dir, step))} rollouts {1000 * rescoring[step]:.2f} ms "
                f"({100 * rescoring[step] / m['timing_s/step']:.3f} % of the step; verl 0.9.1's v1 trainer "
                "logs no timing_s/reward)"
            )
        self.report.append(f"{name}: launch to exit {wall:.0f} s")
        return run_dir, metrics

    def miniature(self, seed: int = 0) -> dict:
        """tests/e2e/miniature.py with this runner's checks on its GRPO launch; fails on its verdict."""
        steps = list(range(1, miniature.STEPS + 1))

        def train(run_dir, task, extra, env):
            _, metrics = self.launch_checked(run_dir, task, extra, env, steps)
            check.check_learning(metrics)
            check.check_checkpoint(run_dir, miniature.RESUME_AT)
            return metrics

        result = miniature.run(self.out / "miniature", seed=seed, train=train)
        held = result["heldout"]
        self.report.append(
            f"miniature seed {seed}: held-out {result['metric']} SFT {held['sft'][result['metric']]:.4f} -> "
            f"GRPO {held['grpo'][result['metric']]:.4f}; training reward first third {result['reward_thirds'][0]:.3f} "
            f"-> last third {result['reward_thirds'][1]:.3f}; resumed steps {result['resume']['steps']} drew the "
            f"uninterrupted run's rows; the recipe's zero-shot preflight on the SFT start {result['preflight']}; "
            f"stages {result['timings_s']}"
        )
        problems = miniature.check_result(result)
        assert not problems, "the miniature did not learn:\n  " + "\n  ".join([*problems, miniature.trajectory(result)])
        return result

    def curves(self, run_dirs: list[Path], out: Path) -> None:
        """``perception-r1-eval curves`` of ``run_dirs`` into ``out`` (the PNG must exist)."""
        command = [
            sys.executable,
            "-m",
            "perception_r1_verl.eval.cli",
            "curves",
            *map(str, run_dirs),
            "--out",
            str(out),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0 and (out / "curves.png").exists(), f"curves: {done.stderr[-2000:]}"
        self.report.append(f"curves: {out / 'curves.png'}")

    def evaluate(self, checkpoint: Path, task: str, model: str) -> None:
        """Merge ``checkpoint`` with verl's model merger (its weights must differ from ``model``'s);
        generate with vLLM and score its val split."""
        merged, val = self.out / "merged" / task, self.data / task / "sample" / "val.parquet"
        eval_dir = self.out / "eval" / task
        py = sys.executable
        env = {**os.environ, **ENV}
        start = time.monotonic()
        for command in (
            [py, "-m", "verl.model_merger", "merge", "--backend", "fsdp",
             "--local_dir", str(checkpoint / "actor"), "--target_dir", str(merged)],
            [py, "-m", "perception_r1_verl.eval.cli", "generate", "--model", str(merged), "--data", str(val),
             "--out", str(eval_dir / "responses.jsonl"), "--backend", "vllm", "--max-new-tokens", "48",
             "--max-model-len", "4096", "--logprobs"],
            [py, "-m", "perception_r1_verl.eval.cli", "score", "--data", str(val),
             "--responses", str(eval_dir / "responses.jsonl"), "--out", str(eval_dir / "scores"), "--no-report"],
        ):  # fmt: skip
            eval_dir.mkdir(parents=True, exist_ok=True)
            with open(eval_dir / "console.log", "a") as log:
                log.write(f"$ {' '.join(command)}\n")
                log.flush()
                code = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
            assert code == 0, f"{command[2:4]} exited {code}; see {eval_dir / 'console.log'}"
        responses = [json.loads(x) for x in (eval_dir / "responses.jsonl").read_text().splitlines() if x.strip()]
        expected = val_rows(self.data, task)
        assert sorted(r["index"] for r in responses) == list(range(expected)) or len(responses) == expected, (
            f"{len(responses)} responses for {expected} val rows"
        )
        # A LoRA run merges into base weights plus lora_adapter/; generate folded it into lora_folded/.
        trained = merged / "lora_folded" if (merged / "lora_adapter").is_dir() else merged
        changed = check.check_weights_moved(self.models / model, trained)
        written = sorted(p.name for p in (eval_dir / "scores").iterdir())
        assert written, f"score wrote nothing in {eval_dir / 'scores'}"
        fields = check.check_generation_fields(responses)
        metrics = json.loads((eval_dir / "scores" / "metrics.json").read_text())
        assert metrics["n_finish_unknown"] == 0 and metrics["n_hit_length"] == fields["length"], metrics
        self.report.append(
            f"eval {task}: merged ({changed} weights differ from the initial model), {len(responses)}/{expected} val rows answered by vLLM, scores {written}, "
            f"stop reasons and token log-probabilities {fields}, {time.monotonic() - start:.0f} s"
        )


def main(argv: list[str]) -> int:
    out = Path(argv[0]).resolve()
    for leftover in ("models", "data", "runs", "merged", "eval", "miniature"):  # old checkpoints would be resumed
        shutil.rmtree(out / leftover, ignore_errors=True)
    runner = Runner(out)
    start = time.monotonic()
    try:
        run_stages(runner, out)
    except BaseException:  # what had passed, and the lines of the launch that failed, for CI's log
        print("\n[e2e] FAILED; reported before the failure:\n  " + "\n  ".join(runner.report), flush=True)
        raise
    stages = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in runner.stages.items())
    print(
        "\n[e2e] passed:\n  " + "\n  ".join(runner.report)
        + f"\n  stages: {stages}\n  total {time.monotonic() - start:.0f} s"
    )  # fmt: skip
    return 0


def run_stages(runner: Runner, out: Path) -> None:
    tiny_models.main([str(runner.models)])
    runner.stage("tiny models")

    runner.miniature(seed=0)
    runner.stage("miniature (SFT, GRPO, held-out evaluation, resume)")
    mini_runs = out / "miniature" / "runs"
    runner.curves([mini_runs / "grpo", mini_runs / "grpo_resumed"], out / "curves")

    curriculum_dir, _ = runner.train(
        "coco_det_curriculum", "coco_det", "tiny-Qwen2.5-VL", [1, 2], extra=CURRICULUM, env={"CURRICULUM": "1"}
    )
    sizes = set(check.group_sizes(curriculum_dir, 1).values())
    assert len(sizes) > 1, f"curriculum step 1: every prompt had {sizes} rollouts"
    runner.report.append(f"coco_det_curriculum step 1: rollouts per prompt {sorted(sizes)}")
    runner.stage("coco_det curriculum")

    # All four tasks in one LoRA run (tiny Qwen2-VL: refcoco's and the others' boxes through
    # the box-token decode path): 2 rows of each, 4 prompts a step. FILTER_GROUPS=1 here: the
    # random model's box answers give all-zero groups (evicted), page OCR's edit similarity
    # differs between rollouts (check_learning saw it before), so refills end.
    mix_dir, mix = runner.train(
        "perception_mix_lora", "perception_mix", "tiny-Qwen2-VL", [1, 2],
        extra=["data.train_batch_size=4"], env={"MIX": MIX, "LORA_RANK": "8", "FILTER_GROUPS": "1"},
    )  # fmt: skip
    check.check_learning(mix)
    step = check.check_filter_groups(mix_dir, mix, batch_size=4)
    runner.report.append(f"perception_mix_lora step {step}: {mix[step][check.EVICTED]} samples evicted and refilled")
    check.check_lora_checkpoint(mix_dir / "checkpoints" / "global_step_2", 8)
    runner.stage("perception_mix LoRA")
    runner.evaluate(mix_dir / "checkpoints" / "global_step_2", "perception_mix/refcoco", "tiny-Qwen2-VL")
    runner.stage("LoRA merge and vLLM evaluation")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
