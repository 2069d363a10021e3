"""``perception-r1-eval curves``: verl file-logger metrics -> curves.png + curves.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from perception_r1_verl.eval import curves as cv
from perception_r1_verl.eval.cli import main

SOURCES = {"refcoco": ("iou", "acc@0.5", "format"), "pixmo_count": ("count", "exact", "format")}


def val_metrics(step: int, seed: int) -> dict:
    """What verl's validation logs: val-core on acc (or reward), val-aux for every component."""
    m = {}
    for source, components in SOURCES.items():
        base = 0.2 + 0.05 * step + 0.01 * seed
        m[f"val-core/{source}/reward/mean@1"] = base
        for c in (*components, "score", "reward_timeout", "reward_error"):
            m[f"val-aux/{source}/{c}/mean@1"] = 0.0 if c.startswith("reward_") else base
        m[f"val-aux/{source}/score/std@1"] = 0.0  # not drawn: only mean@1
    m["val-aux/num_turns/mean"] = 1.0
    return m


def reward(step: int, seed: int) -> float:
    return 0.1 * step + 0.01 * seed


def train_metrics(step: int, seed: int, kl_loss: bool = True) -> dict:
    """One training step as verl 0.9.1's v1 trainer and this plugin's step metrics log it.
    Step 3's batch holds no pixmo_count rollout, so its per-source metrics are not logged."""
    m = {
        "critic/score/mean": reward(step, seed),
        "critic/score/max": 1.0,
        "response_length/mean": 40.0 - step + seed,
        "actor/ppo_kl": 0.001 * step,
        "actor/pg_loss": -0.01,
        "timing_s/step": 12.5,
        "training/global_step": step,
        "perception/iou/mean": 0.3,
    }
    if kl_loss:
        m["actor/kl_loss"] = 0.002 * step
    for source, components in SOURCES.items():
        if source == "pixmo_count" and step == 3:
            continue
        for c in (*components, "score", "reward_timeout", "reward_error"):
            m[f"perception/{source}/{c}/mean"] = 0.0 if c.startswith("reward_") else 0.1 * step
    return m


def write_run(path: Path, seed: int = 0, steps: int = 6, kl_loss: bool = True, extra_lines=()) -> Path:
    """metrics.jsonl as verl's FileLogger writes it: validation before training at step 0 (its
    own record), steps 1..N, the last one carrying the final validation."""
    path.mkdir(parents=True, exist_ok=True)
    lines = [{"step": 0, "data": val_metrics(0, seed)}]
    for step in range(1, steps + 1):
        data = train_metrics(step, seed, kl_loss)
        if step == steps:
            data.update(val_metrics(step, seed))
        lines.append({"step": step, "data": data})
    text = "".join(json.dumps(line) + "\n" for line in lines) + "".join(extra_lines)
    (path / "metrics.jsonl").write_text(text)
    return path


def cells(md: str, run: str, metric: str) -> list[str]:
    """The key-metrics row of ``run`` and ``metric``: steps, first, last, min, max."""
    for line in md.splitlines():
        parts = [p.strip() for p in line.strip("|").split("|")]
        if parts[:2] == [run, f"`{metric}`"]:
            return parts[2:]
    raise AssertionError(f"no row for {run} {metric} in\n{md}")


def reward_row(md: str, run: str) -> list[str]:
    section = md.split("## Training reward")[1]
    for line in section.splitlines():
        parts = [p.strip() for p in line.strip("|").split("|")]
        if parts[0] == run:
            return parts[1:]
    raise AssertionError(f"no reward row for {run} in\n{section}")


def test_one_run_gives_a_png_with_every_panel_and_a_table_with_its_numbers(tmp_path):
    run = write_run(tmp_path / "grpo")
    result = cv.curves([run], tmp_path / "out", log=lambda m: None)

    with Image.open(result["png"]) as img:
        assert img.format == "PNG" and img.width > 500 and img.height > 500
    panels = result["panels"]
    assert panels[0] == "critic/score/mean"
    per_source = [p for p in panels if p.startswith("perception/")]
    assert len(per_source) == 2 * 4  # 2 sources x (3 components, score)
    assert len(result["zero_counters"]) == 2 * 2 * 2  # train and val x 2 sources x 2 counters, all 0
    assert "perception/refcoco/reward_error/mean" not in panels
    assert "perception/iou/mean" not in panels  # the batch-wide mean is not a per-source panel
    assert {"response_length/mean", "actor/kl_loss", "actor/ppo_kl"} <= set(panels)
    assert "val-core/refcoco/reward/mean@1" in panels and "val-aux/pixmo_count/count/mean@1" in panels
    assert not {"val-aux/refcoco/score/std@1", "val-aux/num_turns/mean", "actor/pg_loss", "timing_s/step"} & set(panels)

    md = result["md"].read_text()
    assert cells(md, "grpo", "critic/score/mean") == ["6", "0.1", "0.6", "0.1", "0.6"]
    assert cells(md, "grpo", "response_length/mean") == ["6", "39", "34", "34", "39"]
    assert cells(md, "grpo", "actor/kl_loss") == ["6", "0.002", "0.012", "0.002", "0.012"]
    assert cells(md, "grpo", "val-core/refcoco/reward/mean@1") == ["2", "0.2", "0.5", "0.2", "0.5"]  # steps 0 and 6
    # 6 steps: thirds of 2: (0.1 + 0.2) / 2 and (0.5 + 0.6) / 2
    assert reward_row(md, "grpo") == ["6", "0.15", "0.55", "+0.4"]
    assert "| grpo |" in md and "| 7 | 0 | whole |" in md  # 7 records, no malformed line
    assert "(not drawn): `perception/pixmo_count/reward_error/mean`" in md


def test_a_counter_that_is_not_zero_is_drawn(tmp_path):
    run_dir = write_run(
        tmp_path / "grpo", extra_lines=['{"step": 7, "data": {"perception/refcoco/reward_timeout/mean": 0.5}}\n']
    )
    result = cv.curves([run_dir], tmp_path / "out", log=lambda m: None)
    assert "perception/refcoco/reward_timeout/mean" in result["panels"]
    assert "perception/refcoco/reward_error/mean" in result["zero_counters"]


def test_seeds_overlay_as_their_mean_with_a_min_max_band(tmp_path):
    dirs = [write_run(tmp_path / f"grpo_seed{s}", seed=s) for s in (0, 1, 5)]
    sft = write_run(tmp_path / "sft", seed=2, steps=3, kl_loss=False)
    runs = [cv.read_run(d) for d in (*dirs, sft)]
    series = cv.group_runs(runs)
    assert [(s.name, [r.name for r in s.runs]) for s in series] == [
        ("grpo", ["grpo_seed0", "grpo_seed1", "grpo_seed5"]),
        ("sft", ["sft"]),
    ]
    steps, mean, low, high, count = cv.aggregate([r.metrics["critic/score/mean"] for r in series[0].runs])
    assert steps == [1, 2, 3, 4, 5, 6] and count == [3] * 6
    assert mean == pytest.approx([reward(s, 2) for s in steps])  # seeds 0, 1, 5: mean offset 0.02
    assert low == pytest.approx([reward(s, 0) for s in steps])
    assert high == pytest.approx([reward(s, 5) for s in steps])

    fig = cv.draw(series, ["critic/score/mean", "actor/kl_loss"], tmp_path / "c.png")
    score_ax, kl_ax = fig.axes[:2]
    assert [line.get_label() for line in score_ax.lines] == ["grpo (mean, min-max of 3 runs)", "sft"]
    assert list(score_ax.lines[0].get_ydata()) == pytest.approx(mean)
    band = score_ax.collections[0].get_paths()[0].vertices[:, 1]
    assert min(band) == pytest.approx(min(low)) and max(band) == pytest.approx(max(high))
    assert len(score_ax.collections) == 1  # the single sft run has no band
    assert [line.get_label() for line in kl_ax.lines] == ["grpo (mean, min-max of 3 runs)"]  # sft logged no KL loss

    md = cv.curves([*dirs, sft], tmp_path / "out", log=lambda m: None)["md"].read_text()
    assert reward_row(md, "grpo (mean of 3)") == ["6", "0.17", "0.57", "+0.4"]
    assert reward_row(md, "grpo_seed5") == ["6", "0.2", "0.6", "+0.4"]
    assert reward_row(md, "sft") == ["3", "0.12", "0.32", "+0.2"]  # thirds of 1 step
    assert cells(md, "grpo (mean of 3)", "critic/score/mean") == ["6", "0.12", "0.62", "0.12", "0.62"]


def test_explicit_groups_and_name_clashes(tmp_path):
    a, b = write_run(tmp_path / "a" / "run", seed=0), write_run(tmp_path / "b" / "run", seed=4)
    result = cv.curves([a, b], tmp_path / "o1", log=lambda m: None)
    assert result["series"] == {"run": ["run"], "run [2]": ["run"]}  # same folder name, no seed: not averaged
    result = cv.curves([], tmp_path / "o2", {"lr1e-6": [a, b]}, log=lambda m: None)
    assert result["series"] == {"lr1e-6": ["run", "run"]}
    assert reward_row(result["md"].read_text(), "lr1e-6 (mean of 2)")[1] == "0.17"
    assert cv.read_run(a / ".").name == "run"  # a folder given as "." is named, not ""


def test_a_metric_a_run_did_not_log_is_absent_not_zero(tmp_path):
    run_dir = write_run(tmp_path / "grpo", extra_lines=['{"step": 7, "data": {"critic/score/mean": null}}\n'])
    run = cv.read_run(run_dir)
    assert 3 not in run.metrics["perception/pixmo_count/count/mean"]  # no pixmo rollouts at step 3
    assert 7 not in run.metrics["critic/score/mean"]  # NaN, written as null by orjson
    fig = cv.draw(
        [cv.Series("grpo", [run])], ["perception/pixmo_count/count/mean", "critic/score/mean"], tmp_path / "p.png"
    )
    (line,) = fig.axes[0].lines
    assert list(line.get_xdata()) == [1, 2, 4, 5, 6]
    assert 0.0 not in list(line.get_ydata())
    assert list(fig.axes[1].lines[0].get_xdata()) == [1, 2, 3, 4, 5, 6]

    no_kl = write_run(tmp_path / "nokl", kl_loss=False)
    md = cv.curves([no_kl], tmp_path / "out", log=lambda m: None)["md"].read_text()
    assert "actor/kl_loss" not in md and "`actor/ppo_kl`" in md


def test_malformed_lines_are_counted_and_reported_never_fatal(tmp_path, capsys):
    bad = [
        '{"step": 7, "data": {"critic/score/mean": 0.7}\n',  # cut off
        "not json\n",
        '["step", 8]\n',
        '{"step": "8", "data": {}}\n',
        "\n",  # blank: not counted
        '{"step": 8, "data": {"critic/score/mean": 0.8}}',  # last line without newline: fine
    ]
    run_dir = write_run(tmp_path / "grpo", extra_lines=bad)
    run = cv.read_run(run_dir)
    assert (run.bad_lines, run.records) == (4, 8)
    assert run.metrics["critic/score/mean"][8] == 0.8 and 7 not in run.metrics["critic/score/mean"]

    assert main(["curves", str(run_dir), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "4 malformed line(s) skipped" in captured.err
    assert "| 8 | 4 | whole |" in (tmp_path / "out" / "curves.md").read_text()
    assert "panels of 1 series" in captured.out


def test_reading_is_bounded(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    long = json.dumps({"step": 1, "data": {f"k{i}": i for i in range(2000)}})
    (run_dir / "metrics.jsonl").write_text(
        long + "\n" + '{"step": 2, "data": {"critic/score/mean": 0.5}}\n' + "x" * 5000 + "\n"
    )
    run = cv.read_run(run_dir, max_line=1000)
    assert (run.bad_lines, run.records, run.truncated) == (2, 1, False)  # the long lines skipped, not the next
    assert run.metrics == {"critic/score/mean": {2: 0.5}}
    run = cv.read_run(run_dir, max_bytes=len(long))  # stops after the line that reaches the limit
    assert run.truncated and run.records == 1 and "critic/score/mean" not in run.metrics


def test_cli_errors_are_one_line_with_exit_2(tmp_path, capsys, monkeypatch):
    good = write_run(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    assert main(["curves", str(good), str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "empty: no metrics.jsonl" in err
    assert not (tmp_path / "o").exists()

    assert main(["curves", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert main(["curves", "--out", str(tmp_path / "o")]) == 2
    assert "no run folder given" in capsys.readouterr().err

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "metrics.jsonl").write_text('{"step": 1, "data": {"actor/pg_loss": 1.0}}\nnope\n')
    assert main(["curves", str(tmp_path / "junk"), "--out", str(tmp_path / "o")]) == 2
    assert "none of the runs logged a metric" in capsys.readouterr().err

    with pytest.raises(SystemExit) as e:
        main(["curves", str(good), "--group", "nodirs", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "NAME=RUN_DIR" in capsys.readouterr().err
    assert main(["curves", "--group", f"a={good}", "--group", f"a={good}", "--out", str(tmp_path / "o")]) == 2

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if the plot extra were not installed
    assert main(["curves", str(good), "--out", str(tmp_path / "o")]) == 2
    assert "perception-r1-verl[plot]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_jsonl_file_is_read_as_a_run(tmp_path, capsys):
    """verl's default file-logger path: <project>/<experiment>.jsonl."""
    run_dir = write_run(tmp_path / "x")
    file = (run_dir / "metrics.jsonl").rename(tmp_path / "refcoco_grpo.jsonl")
    assert main(["curves", str(file), "--group", f"again={file},{file}", "--out", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "curves.md").read_text()
    assert cells(md, "refcoco_grpo", "critic/score/mean")[0] == "6"
    assert "| again (mean of 2) |" in md
