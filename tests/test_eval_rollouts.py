"""``perception-r1-eval rollouts`` on dumps written by verl 0.9.1's own dump functions.

The rows come from this project's converters on the offline sample; the prompts are
rendered with the Qwen2.5-VL chat template and decoded with ``skip_special_tokens=True``,
as verl's trainers decode ``prompts`` and ``responses`` before dumping them
(``verl/trainer/ppo/v1/trainer_base.py`` ``_log_rollout_data``); the scores and components
are the project's reward, as the ``perception`` reward manager returns them. The ``run``
fixture's dumps are plain verl (``uid`` only: matched by text, components recomputed); the
last tests dump through verl's ``_log_rollout_data`` with this plugin's columns.
"""

from __future__ import annotations

import base64
import re
from io import BytesIO
from types import SimpleNamespace

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from qwen_fixtures import QWEN_VL_CHAT_TEMPLATE, write_qwen2_5_vl_processor
from test_verl_plugin import agent_loop_sample, dump_v1_rollouts

from perception_r1_verl import rewards
from perception_r1_verl.data.options import ConvertOptions
from perception_r1_verl.data.pixmo_count import convert_pixmo_count
from perception_r1_verl.data.refcoco import convert_refcoco
from perception_r1_verl.data.sample import make_sample_sources
from perception_r1_verl.eval.cli import main
from perception_r1_verl.eval.rollouts import rollout_report
from perception_r1_verl.plugin.step_metrics import COUNTERS
from perception_r1_verl.rewards import render_answer

UNPARSABLE_GROUNDING = "I cannot find it in the picture."
UNPARSABLE_COUNTING = "There are quite a few of them."


def _rows(path):
    return pq.read_table(path).to_pylist()


def _prompt_ids(tokenizer, prompt) -> list[int]:
    """verl's prompt token ids: the messages (``<image>`` -> an image part), templated."""
    messages = [
        {
            "role": m["role"],
            "content": [{"type": "image"}, {"type": "text", "text": m["content"].replace("<image>", "")}],
        }
        for m in prompt
    ]
    text = tokenizer.apply_chat_template(
        messages, chat_template=QWEN_VL_CHAT_TEMPLATE, add_generation_prompt=True, tokenize=False
    )
    return tokenizer(text)["input_ids"]


def _decoded_prompt(tokenizer, prompt):
    """The dumped ``input``: the prompt ids decoded without special tokens."""
    return tokenizer.decode(_prompt_ids(tokenizer, prompt), skip_special_tokens=True)


def _outputs(row, spam: bool) -> list[str]:
    """Four rollouts of one prompt (GRPO's group), each meant for one section of the report."""
    task, family = row["extra_info"]["task"], row["extra_info"]["model_family"]
    gt = orjson.loads(row["reward_model"]["ground_truth"])
    perfect = render_answer(task, gt, family)
    if task == "grounding":
        x1, y1, x2, y2 = gt["bbox_2d"]
        shifted = render_answer(task, {"bbox_2d": [x1, y1, (x1 + x2) / 2, y2]}, family)
        spammed = "```json\n" + orjson.dumps([{"bbox_2d": gt["bbox_2d"]}] * 10).decode() + "\n```"
        return [perfect, shifted, UNPARSABLE_GROUNDING, spammed if spam else ""]
    point = gt["points"][0]
    repeated = render_answer(task, {"count": gt["count"], "points": [point] * gt["count"]}, family)
    return [perfect, repeated if gt["count"] > 1 else perfect, "[]", UNPARSABLE_COUNTING]


def _score(row, output, **settings):
    """What the ``perception`` reward manager, given reward ``settings``, puts in
    reward_extra_info for one rollout."""
    info = dict.fromkeys((*rewards.component_keys(), *COUNTERS))
    info.update(dict.fromkeys(COUNTERS, 0.0))
    info.update(
        rewards.compute_score(
            row["data_source"], output, row["reward_model"]["ground_truth"], extra_info=row["extra_info"], **settings
        )
    )
    return info


def _batch(tokenizer, rows, spam_row):
    inputs, outputs, gts, infos, uids = [], [], [], [], []
    for i, row in enumerate(rows):
        prompt = _decoded_prompt(tokenizer, row["prompt"])
        for j, output in enumerate(_outputs(row, spam=i == spam_row)):
            inputs.append(prompt)
            outputs.append(output)
            gts.append(row["reward_model"]["ground_truth"])
            infos.append(_score(row, output))
            uids.append(f"prompt{i}_0_{j}")
    return inputs, outputs, gts, infos, uids


def _dump_v1(folder, step, inputs, outputs, gts, scores, uids):
    """verl's v1 trainer dump: ``PPOTrainer._dump_generations`` with its executor, called
    with the arguments ``_log_rollout_data`` passes (only ``uid`` as extra column)."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    trainer = SimpleNamespace(global_steps=step, _write_generations=PPOTrainer._write_generations)
    PPOTrainer._init_dump_executor(trainer)
    PPOTrainer._dump_generations(
        trainer,
        inputs=inputs,
        outputs=outputs,
        gts=gts,
        scores=scores,
        reward_extra_infos_dict={"uid": uids},
        dump_path=str(folder),
    )
    PPOTrainer._shutdown_dump_executor(trainer)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rollouts")
    src = make_sample_sources(root / "sample", n_images=6, seed=0)
    options = ConvertOptions(progress=False)
    ref, count = root / "refcoco.parquet", root / "pixmo.parquet"
    convert_refcoco(ref, options, jsonl=src.grounding, images=src.images)
    convert_pixmo_count(src.counting, src.images, count, options)
    # Row 0 of the grounding data loses its image: drawn without it, and counted.
    table = _rows(ref)
    table[0]["images"][0]["bytes"] = b"not an image"
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(ref)), ref)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(write_qwen2_5_vl_processor(root / "processor"))
    rows = table + _rows(count)
    dump = root / "dump"
    step1 = _batch(tokenizer, rows, spam_row=None)
    step2 = _batch(tokenizer, rows, spam_row=0)
    for step, (inputs, outputs, gts, infos, uids) in ((1, step1), (2, step2)):
        _dump_v1(dump, step, inputs, outputs, gts, [i["score"] for i in infos], uids)
    # Step 2 also holds a rollout of a row that is not in the data, and a line cut off.
    stray = orjson.loads(step2[2][0])
    stray["bbox_2d"] = [1, 1, 2, 2]
    _dump_v1(root / "stray", 2, step2[0][:1], step2[1][:1], [orjson.dumps(stray).decode()], [0.5], ["x_0_0"])
    with open(dump / "2.jsonl", "ab") as f:
        f.write((root / "stray" / "2.jsonl").read_bytes())
        f.write(b'{"input": "cut off by a crash", "outp')
    (dump / "notes.txt").write_text("not a dump")
    out = root / "report.html"
    stats = rollout_report(dump, [ref, count], out, top_k=3)
    return SimpleNamespace(
        root=root,
        ref=ref,
        count=count,
        rows=rows,
        dump=dump,
        step1=step1,
        step2=step2,
        tokenizer=tokenizer,
        stats=stats,
        html=out.read_text(),
        n_ref=len(table),
    )


def _section(html, sid):
    m = re.search(rf"<section id='{sid}'><h2>[^<]*: (\d+) of (\d+)</h2>(.*?)</section>", html, re.S)
    assert m, f"section {sid} missing"
    cases = re.findall(
        r'<div class="case" data-where="([^"]+)">(.*?)(?=<div class="case"|</div></section>|$)',
        m.group(3) + "</div></section>",
        re.S,
    )
    return int(m.group(1)), int(m.group(2)), cases


def _line(where):  # "2.jsonl:5" -> (2, 4), the step and the 0-based rollout of our batch
    name, n = where.split(":")
    return int(name.split(".")[0]), int(n) - 1


def test_the_dump_is_verls_format(run):
    first = orjson.loads((run.dump / "1.jsonl").read_bytes().splitlines()[0])
    assert set(first) == {"input", "output", "gts", "score", "step", "uid"}
    assert first["step"] == 1 and first["gts"] == run.rows[0]["reward_model"]["ground_truth"]
    assert first["input"].startswith("system\nYou are a helpful assistant.\nuser\n")  # special tokens gone


def test_counts(run):
    s = run.stats
    n = 4 * len(run.rows)
    assert s["steps"] == [1, 2] and s["rollouts"] == 2 * n + 1
    assert s["matched"] == 2 * n and s["unmatched"] == 1
    assert s["unmatched_reasons"] == {"ground truth in no row": 1}
    assert s["bad_lines"] == 1 and s["bad_line_examples"] == [f"2.jsonl:{n + 2}"]
    assert s["skipped_files"] == 1 and s["missing_images"] == 1
    # Recomputed from the dumped text, the components give back the dumped score.
    assert s["score_mismatches"] == 0 and s["reward_errors"] == 0
    assert s["sections"]["box_spam"] == 1
    n_ground = 4 * run.n_ref
    assert s["sections"]["unparsable"] == 2 * len(run.rows)  # one per prompt and step
    assert s["sections"]["best-grounding"] == 2 * n_ground and s["sections"]["best-counting"] == 2 * (n - n_ground)
    assert (
        s["sections"]["empty"] == 2 * (len(run.rows) - run.n_ref) + 2 * run.n_ref - 1
    )  # [] per counting, "" per grounding
    for word in ("Problems", "1 unreadable dump lines", "1 rollouts matched no row", "bad line 2.jsonl:"):
        assert word in run.html


def test_sections_hold_the_right_rollouts(run):
    outputs = {1: run.step1[1], 2: run.step2[1]}
    scores = {step: [i["score"] for i in b[3]] for step, b in ((1, run.step1), (2, run.step2))}
    shown, total, best = _section(run.html, "best-grounding")
    assert shown == 3 and total == 8 * run.n_ref
    for where, _ in best:
        step, i = _line(where)
        assert scores[step][i] == rewards.max_score("grounding")  # the perfect answers
        assert outputs[step][i] == render_answer("grounding", orjson.loads(run.step1[2][i]), "qwen2_5_vl")
    assert [_line(w)[0] for w, _ in best] == [2, 2, 2]  # ties: the latest step first
    _, _, worst = _section(run.html, "worst-grounding")
    assert all(scores[_line(w)[0]][_line(w)[1]] == 0.0 for w, _ in worst)
    _, _, spam = _section(run.html, "box_spam")
    step, i = _line(spam[0][0])
    assert (step, i) == (2, 3) and "10 objects, ground truth 1" in spam[0][1]
    assert "image missing or unreadable" in spam[0][1]  # row 0 lost its image
    _, total, repeated = _section(run.html, "repeated")
    assert "repeated: 45 repeated pairs" in spam[0][1]  # the spam repeats one box: also in this section
    assert total == 1 + sum(
        2 * (r["extra_info"]["task"] == "counting" and orjson.loads(r["reward_model"]["ground_truth"])["count"] > 1)
        for r in run.rows
    )
    _, _, unparsable = _section(run.html, "unparsable")
    assert all(outputs[_line(w)[0]][_line(w)[1]] in (UNPARSABLE_GROUNDING, UNPARSABLE_COUNTING) for w, _ in unparsable)
    _, total, unmatched = _section(run.html, "unmatched")
    assert total == 1 and "ground truth in no row" in unmatched[0][1]
    for _, body in best + worst:  # every component of the task, recomputed for the v1 dump
        assert all(k in body for k in ("iou ", "acc@0.5 ", "format ", "recomputed"))


def test_images_are_embedded_with_both_drawings(run):
    tags = re.findall(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", run.html)
    cases = re.findall(r'<div class="case" data-where="[^"]+">(.*?)(?=<div class="case"|</section>)', run.html, re.S)
    drawn = [c for c in cases if "image missing" not in c and "unmatched:" not in c]
    assert len(tags) == len(drawn) > 0
    _, _, best = _section(run.html, "best-grounding")  # exact answers: both drawings must show
    perfect = next(re.search(r"base64,([A-Za-z0-9+/=]+)", body).group(1) for _, body in best if "base64," in body)
    pixels = np.asarray(Image.open(BytesIO(base64.b64decode(perfect))).convert("RGB")).astype(int)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    assert ((g > 150) & (r < 80) & (b < 80)).sum() > 20  # the ground truth, green
    assert ((r > 180) & (g < 80) & (b < 80)).sum() > 20  # the rollout, red


def _summary(html):
    """The per-step table: its header, then one list of cells per step."""
    table = re.search(r"<table id='summary'>(.*?)</table>", html, re.S).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    return [re.findall(r"<th>(.*?)</th>", rows[0]), *(re.findall(r"<td>(.*?)</td>", r) for r in rows[1:])]


def test_summary_per_step(run):
    head, *rows = _summary(run.html)
    assert head[:8] == [
        "step",
        "rollouts",
        "matched",
        "mean score",
        "% unparsable",
        "% box spam",
        "% repeated",
        "% empty",
    ]
    assert {"iou", "format", "count", "location"} <= set(head)
    assert [r[0] for r in rows] == ["1", "2"]
    step1 = dict(zip(head, rows[0], strict=True))
    scores = [i["score"] for i in run.step1[3]]
    assert step1["step"] == "1" and step1["mean score"] == f"{np.mean(scores):.3f}"
    assert step1["% unparsable"] == "25.0"  # one rollout in four
    ious = [i["iou"] for i in run.step1[3] if i["iou"] is not None]
    assert step1["iou"] == f"{np.mean(ious):.3f}"


def test_legacy_dump_components_are_read_not_recomputed(run, tmp_path):
    """The legacy RayPPOTrainer dumps every reward_extra_info column beside the five keys."""
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    inputs, outputs, gts, infos, uids = run.step1
    columns = {k: [i[k] for i in infos] for k in infos[0]}
    RayPPOTrainer._write_generations(inputs, outputs, gts, [i["score"] for i in infos], columns, str(tmp_path), 7)
    stats = rollout_report(tmp_path, [run.ref, run.count], tmp_path / "r.html", top_k=2)
    html = (tmp_path / "r.html").read_text()
    assert stats["steps"] == [7] and stats["matched"] == len(inputs) and "recomputed" not in html
    _, _, best = _section(html, "best-counting")
    assert all("count 1.000 | exact 1.000" in body for _, body in best)


def test_cli_steps_last_and_errors(run, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert (
        main(
            [
                "rollouts",
                str(run.dump),
                "--data",
                str(run.ref),
                str(run.count),
                "--out",
                str(out),
                "--steps",
                "2,9",
                "--top-k",
                "1",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "no dump for steps [9]" in captured.err and "1 bad lines" in captured.err
    assert "rollouts of steps [2]" in captured.out and _summary(out.read_text())[1][0] == "2"
    assert main(["rollouts", str(run.dump), "--data", str(run.ref), "--out", str(out), "--last", "1"]) == 0
    assert "unmatched" in capsys.readouterr().err  # the counting rows are not in this data
    assert main(["rollouts", str(tmp_path / "nothing"), "--data", str(run.ref), "--out", str(out)]) == 2
    assert main(["rollouts", str(run.dump), "--data", str(run.ref), "--out", str(out), "--steps", "5"]) == 2
    assert "error: no {step}.jsonl" in capsys.readouterr().err


# A reward override the report cannot know: recomputing with defaults gives other scores.
SETTINGS = {"iou_shape": "iou_squared"}
TIMED_OUT = "prompt2_0_0"


@pytest.fixture(scope="module")
def v1(run, tmp_path_factory):
    """A step dumped by verl's v1 ``_log_rollout_data`` with this plugin's columns, scored
    with ``SETTINGS``: every rollout of ``run.rows``, a padding sample, and a stray rollout
    that names row 1's index with another ground truth."""
    folder = tmp_path_factory.mktemp("v1")
    eos = run.tokenizer.eos_token_id
    samples, keys, infos = [], [], {}
    for i, row in enumerate(run.rows):
        ids = _prompt_ids(run.tokenizer, row["prompt"])
        if i == 0:  # a prompt the text match cannot find (a template that rewrites the question)
            ids = run.tokenizer("user\nWhere is it?\nassistant\n")["input_ids"]
        for j, output in enumerate(_outputs(row, spam=False)):
            key = f"prompt{i}_{j}_0"
            infos[key] = _score(row, output, **SETTINGS)
            if key == TIMED_OUT:  # what the manager reports for a reward over its time limit
                infos[key] = (
                    dict.fromkeys(infos[key]) | dict.fromkeys(COUNTERS, 0.0) | {"score": 0.0, "reward_timeout": 1.0}
                )
            samples.append(
                agent_loop_sample(
                    key,
                    ids,
                    run.tokenizer.encode(output) + [eos],
                    row["data_source"],
                    row["reward_model"]["ground_truth"],
                    row["extra_info"],
                    infos[key],
                )
            )
            keys.append(key)
    row = run.rows[1]
    stray = orjson.loads(row["reward_model"]["ground_truth"]) | {"bbox_2d": [1, 1, 2, 2]}
    samples.append(
        agent_loop_sample(
            "stray_0_0",
            samples[4]["prompts"].tolist(),
            [eos],
            row["data_source"],
            orjson.dumps(stray).decode(),
            row["extra_info"],
            infos["prompt1_0_0"],
        )
    )
    samples.append({**samples[0], "uid": "pad0", "responses": torch.tensor([eos]), "rm_scores": torch.zeros(1)})
    lines = dump_v1_rollouts(run.tokenizer, samples, [*keys, "stray_0_0", "pad0_0_0"], folder, 5, padding={"pad0_0_0"})
    out = folder / "report.html"
    stats = rollout_report(folder, [run.ref, run.count], out, top_k=100)
    return SimpleNamespace(lines=lines, infos=infos, stats=stats, html=out.read_text(), n=len(keys))


def test_the_v1_dump_carries_the_managers_components(run, v1):
    components = [k for k in rewards.component_keys() if k != "score"]
    real = [line for line in v1.lines if not line["is_padding"] and line["uid"] != "stray_0_0"]
    assert len(real) == v1.n and len(v1.lines) == v1.n + 2
    keys = (*components, *COUNTERS)
    for line in real:
        assert {k: line[k] for k in keys} == {k: v1.infos[line["uid"]][k] for k in keys}
        i = int(line["uid"].split("_")[0].removeprefix("prompt"))
        assert (line["data_source"], line["index"], line["task"]) == (
            run.rows[i]["data_source"],
            run.rows[i]["extra_info"]["index"],
            run.rows[i]["extra_info"]["task"],
        )


def test_a_v1_dump_with_columns_is_matched_by_index_and_not_recomputed(run, v1):
    s = v1.stats
    assert s["rollouts"] == v1.n + 1 and s["padding"] == 1  # the padding sample is left out
    # Row 0's rewritten prompt too: matched by data_source and index, not by text.
    assert s["matched"] == s["matched_by_index"] == v1.n
    assert s["index_misses"] == 1 and s["unmatched_reasons"] == {"ground truth in no row": 1}  # the stray
    assert s["score_mismatches"] == 0 and s["reward_errors"] == 0 and "recomputed" not in v1.html
    by_line = {f"5.jsonl:{n}": line for n, line in enumerate(v1.lines, 1)}
    shifted = 0
    for task in ("grounding", "counting"):
        names = rewards.get_reward_cls(task).components
        for sid in (f"best-{task}", f"worst-{task}"):
            for where, body in _section(v1.html, sid)[2]:
                line = by_line[where]
                expected = " | ".join(f"{k} {line[k]:.3f}" for k in names if line[k] is not None)
                assert expected in body and f"score {line['score']:.3f}" in body, where
                default = rewards.compute_score(line["data_source"], line["output"], line["gts"])["score"]
                shifted += abs(default - line["score"]) > 1e-6
    assert shifted > 0  # some shown scores are the override's, which recomputation would have lost
    assert "1 padding samples verl added to fill the batch" in v1.html
    assert s["reward_timeout"] == 1 and s["reward_error"] == 0
    [timed_out] = [
        body for where, body in _section(v1.html, "worst-grounding")[2] if by_line[where]["uid"] == TIMED_OUT
    ]
    assert "scored 0 in training: reward_timeout" in timed_out and "no components" in timed_out
    assert "1 rollouts whose dumped data_source and index name no row" in v1.html
