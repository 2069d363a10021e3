"""Grounding, counting and OCR metrics against values computed by hand, through the CLI's path.

Splits are hand-made parquet files following the reward contract (docs/rewards.md).
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from eval_fixtures import make_split, write_responses

from perception_r1_verl.eval import cli, ocr
from perception_r1_verl.eval.score import score
from perception_r1_verl.parsing import parse_answer


def test_grounding_metrics_by_hand(tmp_path):
    f = [100, 100]
    gts = [
        {"bbox_2d": b, "frame": f}
        for b in (
            [0, 0, 10, 10],
            [0, 0, 10, 10],
            [0, 0, 10, 10],
            [20, 20, 40, 40],
            [0, 0, 10, 10],
            [0, 0, 20, 20],
            [0, 0, 10, 10],
        )
    ]
    texts = [
        "[0, 0, 10, 10]",  # IoU 1, centre in
        '```json\n[{"bbox_2d": [0, 0, 10, 20], "label": "dog"}]\n```',  # 0.5, centre on the edge: in
        "<|box_start|>(5,0),(15,10)<|box_end|>",  # 1/3, centre (10, 5) on the edge: in
        "[0, 0, 10, 10]",  # 0, out
        None,  # missing: 0, out
        "[-10, -10, 10, 10]",  # clipped to [0, 0, 10, 10]: 0.25, centre in
        "<think>it is on the left</think><answer>[0, 0, 8, 10]</answer>",  # 0.8, in
    ]
    groups = ["refcoco/val"] * 4 + ["refcoco+/testA"] * 3
    data = make_split(tmp_path / "g.parquet", "grounding", gts, groups, think=[0, 0, 0, 0, 0, 0, 1])
    m = score(data, write_responses(tmp_path / "r.jsonl", texts), tmp_path / "out")
    assert m["n_samples"] == 7 and m["n_missing"] == 1
    assert m["Acc@0.5"] == pytest.approx(3 / 7)
    assert m["Acc@0.75"] == pytest.approx(2 / 7)
    assert m["Acc@0.95"] == pytest.approx(1 / 7)
    assert m["mIoU"] == pytest.approx((1 + 0.5 + 1 / 3 + 0 + 0 + 0.25 + 0.8) / 7)
    assert m["CenterAcc"] == pytest.approx(5 / 7)
    assert m["by_split"]["refcoco/val"]["Acc@0.5"] == pytest.approx(2 / 4)
    assert m["by_split"]["refcoco+/testA"]["Acc@0.5"] == pytest.approx(1 / 3)
    assert m["by_split"]["refcoco+/testA"]["n_samples"] == 3
    md = (tmp_path / "out" / "metrics.md").read_text()
    assert "| all | 7 | 42.9 | 28.6 | 14.3 |" in md and "refcoco+/testA" in md
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/jpeg;base64,") == 2 * 7  # best 7 and worst 7 of 7 samples


def test_counting_metrics_by_hand(tmp_path):
    gts = [
        {"count": 3, "points": [[1, 1], [5, 5], [9, 9]], "frame": [100, 100]},
        {"count": 3, "points": [[1, 1], [5, 5], [9, 9]], "frame": [100, 100]},
        {"count": 4, "frame": [100, 100]},
        {"count": 0, "points": [], "frame": [100, 100]},
        {"count": 2, "frame": [100, 100]},
    ]
    texts = [
        '[{"point_2d": [1, 1]}, {"point_2d": [5, 5]}, {"point_2d": [9, 9]}]',
        '[{"bbox_2d": [0, 0, 2, 2]}, {"bbox_2d": [4, 4, 6, 6]}]',
        "".join(f"<|box_start|>({i},{i}),({i + 3},{i + 3})<|box_end|>" for i in range(4)),
        None,  # nothing said about an empty image: right
        '[{"point_2d": [1]}, {"point_2d": [3, 4]}]',
    ]  # a malformed item does not count
    data = make_split(tmp_path / "c.parquet", "counting", gts, ["pixmo_count/val"] * 3 + ["pixmo_count/test"] * 2)
    m = score(data, write_responses(tmp_path / "r.jsonl", texts), tmp_path / "out")
    assert m["Acc"] == pytest.approx(3 / 5) and m["MAE"] == pytest.approx(2 / 5)
    assert m["by_split"]["pixmo_count/val"]["Acc"] == pytest.approx(2 / 3)
    assert m["by_split"]["pixmo_count/test"]["Acc"] == pytest.approx(1 / 2)


OCR_CASES = [  # prediction, reference, edit distance, precision, recall, F1, BLEU
    ("the cat sat on the mat", "the cat sat on the mat", 0.0, 1.0, 1.0, 1.0, 1.0),
    ("the cat", "the cat sat", 4 / 11, 1.0, 2 / 3, 0.8, 0.0),
    (None, "hello", 1.0, 0.0, 0.0, 0.0, 0.0),  # missing response: scored, never a crash
    ("你好", "你好世界", 0.5, 1.0, 0.5, 2 / 3, 0.0),
]


@pytest.fixture
def ocr_split(tmp_path):
    data = make_split(tmp_path / "o.parquet", "ocr", [{"text": c[1]} for c in OCR_CASES], ["page_ocr/test"] * 4)
    return data, write_responses(tmp_path / "r.jsonl", [c[0] for c in OCR_CASES])


def test_ocr_metrics_by_hand(ocr_split, tmp_path):
    data, responses = ocr_split
    m = score(data, responses, tmp_path / "out", zh_tokenizer="char")
    for name, col in (("edit_distance", 2), ("precision", 3), ("recall", 4), ("F1", 5), ("BLEU", 6)):
        assert m[name] == pytest.approx(sum(c[col] for c in OCR_CASES) / 4), name
        assert m["by_language"]["zh"][name] == pytest.approx(OCR_CASES[3][col]), name
        assert m["by_language"]["en"][name] == pytest.approx(sum(c[col] for c in OCR_CASES[:3]) / 3), name
    assert m["zh_tokenizer"] == "char" and m["by_language"]["en"]["n_samples"] == 3
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<del>sat</del>" in html and "<del>世界</del>" in html


def test_bleu_is_nltk_sentence_bleu():
    from nltk.translate.bleu_score import sentence_bleu

    ref, hyp = "a b c d e f g".split(), "a b c d x f g".split()
    assert ocr.bleu(hyp, ref) == pytest.approx(sentence_bleu([ref], hyp))


def test_meteor_missing_wordnet_is_reported_not_fatal(ocr_split, tmp_path, monkeypatch):
    data, responses = ocr_split
    monkeypatch.setattr(ocr, "find_wordnet", lambda: None)  # the OCR metric looks it up
    m = score(data, responses, tmp_path / "out", zh_tokenizer="char", report=False)
    assert m["METEOR"] is None and m["by_language"]["en"]["METEOR"] is None
    assert m["F1"] == pytest.approx(sum(c[5] for c in OCR_CASES) / 4)
    (warning,) = [w for w in m["warnings"] if "METEOR" in w]
    assert "wordnet-base" in warning and "nltk.downloader wordnet" in warning
    assert "METEOR" in (tmp_path / "out" / "metrics.md").read_text()


def test_meteor_by_hand_with_offline_wordnet():
    wordnet = ocr.find_wordnet()
    if wordnet is None:
        pytest.skip(ocr.METEOR_HELP)
    exact = ocr.sample_ocr(parse_answer("the cat sat on the mat"), {"text": "the cat sat on the mat"}, wordnet=wordnet)
    # 6 matches in one chunk: 1 - 0.5 * (1/6)^3
    assert exact["METEOR"] == pytest.approx(1 - 0.5 / 216)
    # "car" ~ "auto" only through WordNet: 4 matches in one chunk: 1 - 0.5 * (1/4)^3
    synonym = ocr.sample_ocr(parse_answer("the car is red"), {"text": "the auto is red"}, wordnet=wordnet)
    assert synonym["METEOR"] == pytest.approx(1 - 0.5 / 64)
    assert ocr.sample_ocr(parse_answer(""), {"text": "x"}, wordnet=wordnet)["METEOR"] == 0.0


def test_jieba_tokenizer_when_installed():
    pytest.importorskip("jieba", reason="jieba is optional; without it Chinese OCR uses per-character tokens")
    assert ocr.resolve_zh_tokenizer("auto") == "jieba"
    assert "".join(ocr.tokenize("我爱北京天安门", "zh", "jieba")) == "我爱北京天安门"


def test_responses_file_problems_are_counted(tmp_path):
    data = make_split(tmp_path / "g.parquet", "grounding", [{"bbox_2d": [0, 0, 10, 10], "frame": [100, 100]}] * 2)
    path = tmp_path / "r.jsonl"
    path.write_text(
        '{"index": 0, "response": "[0, 0, 10, 10]"}\n{"index": 0, "response": "[]"}\n'
        '{"index": 7, "response": "[]"}\n{"index": 1, "resp'
    )
    m = score(data, path, tmp_path / "out", report=False)
    assert m["responses"] == {"bad_lines": 1, "duplicates": 1, "unmatched": 1}
    assert m["n_missing"] == 1 and m["Acc@0.5"] == 0.5  # the first response of index 0 is kept
    assert any("not in the split" in w for w in m["warnings"])


def test_length_cuts_are_counted_and_marked(tmp_path):
    """``finish_reason`` "length" counts in n_hit_length even when the text looks whole;
    files from before the field (or with junk in it) count as unknown, never crash."""
    data = make_split(tmp_path / "g.parquet", "grounding", [{"bbox_2d": [0, 0, 10, 10], "frame": [100, 100]}] * 5)
    path = tmp_path / "r.jsonl"
    lines = [
        {"index": 0, "response": "[0, 0, 10, 10]", "finish_reason": "length"},  # whole text, engine cut
        {"index": 1, "response": '[{"bbox_2d": [0, 0, 10, 10]}, {"bbox_2d": [1,', "finish_reason": "length"},
        {"index": 2, "response": "[0, 0, 10, 10]", "finish_reason": "stop"},
        {"index": 3, "response": "[0, 0, 10, 10]"},  # an older file's line
        {"index": 4, "response": "[0, 0, 10, 10]", "finish_reason": {"x": 1}},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    m = score(data, path, tmp_path / "out", top_k=5)
    assert (m["n_truncated"], m["n_hit_length"], m["n_finish_unknown"]) == (1, 2, 2)
    records = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert [r["finish_reason"] for r in records] == ["length", "length", "stop", None, None]
    assert "n_hit_length 2, n_finish_unknown 2" in (tmp_path / "out" / "metrics.md").read_text()
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("CUT AT max_new_tokens") == 2 * 2  # both cut rows, in the best and the worst five


def test_mixed_tasks_are_refused(tmp_path):
    make_split(tmp_path / "a.parquet", "ocr", [{"text": "x"}])
    rows = pq.read_table(tmp_path / "a.parquet").to_pylist()
    rows.append({**rows[0], "extra_info": {**rows[0]["extra_info"], "task": "grounding", "index": 1}})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mixed.parquet")
    with pytest.raises(ValueError, match="one task per split"):
        score(tmp_path / "mixed.parquet", write_responses(tmp_path / "r.jsonl", ["x", "y"]), tmp_path / "o")


def test_cli_score_writes_everything(ocr_split, tmp_path, capsys):
    data, responses = ocr_split
    out = tmp_path / "cli"
    assert (
        cli.main(
            [
                "score",
                "--data",
                str(data),
                "--responses",
                str(responses),
                "--out",
                str(out),
                "--zh-tokenizer",
                "char",
                "--top-k",
                "2",
            ]
        )
        == 0
    )
    assert {p.name for p in out.iterdir()} == {"metrics.json", "metrics.md", "samples.jsonl", "report.html"}
    assert "| all | 4 |" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["n_samples"] == 4
    assert len((out / "samples.jsonl").read_text().splitlines()) == 4


def test_debian_wordnet_without_a_writable_cache(tmp_path, monkeypatch):
    if not all((ocr.DEBIAN_WORDNET / name).exists() for name in ocr._DEBIAN_FILES):
        pytest.skip("needs Debian's wordnet-base (apt-get install wordnet-base)")
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # cannot hold folders, even for root
    wordnet = ocr._debian_wordnet_reader()
    assert "auto" in {lemma.name() for lemma in wordnet.synsets("car")[0].lemmas()}
