"""``perception-r1-prep``: the console script pyproject.toml declares, ``python -m`` and the
``data_prep/`` wrappers reach the same converters."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from perception_r1_verl.data.cli import SOURCES, converter
from perception_r1_verl.data.sample import make_sample_sources

REPO = Path(__file__).resolve().parents[1]


def console_script(name: str):
    """What the installed ``name`` executable calls, resolved from pyproject.toml."""
    (target,) = re.findall(rf'^{name} = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    return EntryPoint(name, target, "console_scripts").load()


def test_console_script_lists_every_source(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["perception-r1-prep", "--help"])
    with pytest.raises(SystemExit) as exit_:
        console_script("perception-r1-prep")()
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(source in out for source in ("coco_det", "refcoco", "pixmo_count", "page_ocr", "check"))


def test_console_script_converts(tmp_path, monkeypatch):
    src = make_sample_sources(tmp_path / "s", n_images=2)
    out = tmp_path / "o.parquet"
    argv = ["perception-r1-prep", "page_ocr", "--table", str(src.ocr), "--images", str(src.images), "--out", str(out),
            "--no-progress"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    assert console_script("perception-r1-prep")() == 0
    assert json.loads(out.with_suffix(".summary.json").read_text())["rows"] == 2
    assert pq.read_table(out).column("ability").to_pylist() == ["ocr", "ocr"]


def test_unknown_source_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        console_script("perception-r1-prep")(["coco"])
    assert exit_.value.code == 2 and "invalid choice: 'coco'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [[sys.executable, "-m", "perception_r1_verl.data.cli"]]
    + [[sys.executable, str(REPO / "data_prep" / f"{'check_parquet' if s == 'check' else s}.py")] for s in SOURCES],
    ids=["module", *SOURCES],
)
def test_module_and_wrappers_show_their_help(command):
    """``python -m`` and each ``data_prep/`` script, run from anywhere (no sys.path surgery)."""
    run = subprocess.run([*command, "--help"], capture_output=True, text=True, cwd=REPO / "data_prep")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: perception-r1-prep")


def test_a_wrapper_converts_from_inside_data_prep(tmp_path):
    """Run from data_prep/ (the script's folder first on sys.path), numpy, pyarrow and PIL still
    import the standard library, not a script of that folder."""
    src = make_sample_sources(tmp_path / "s", n_images=2)
    out = tmp_path / "o.parquet"
    run = subprocess.run(
        [sys.executable, "coco_det.py", "--annotations", src.annotations, "--images", src.images, "--out", out,
         "--no-progress"],
        capture_output=True, text=True, cwd=REPO / "data_prep",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert pq.read_table(out).column("ability").to_pylist() == ["detection", "detection"]


@pytest.mark.parametrize("source", ["coco_det", "refcoco", "pixmo_count", "page_ocr"])
def test_each_converter_declares_the_recipes_sources_in_flags_it_accepts(source, tmp_path):
    """``release_args`` / ``sample_args`` (what the training recipe runs) parse with the converter's own
    parser, and name files of the sample or of the release root."""
    module = converter(source)
    sample = make_sample_sources(tmp_path / "s", n_images=1)
    for flags, root in (
        (module.sample_args(sample), tmp_path / "s"),
        (module.release_args("val", tmp_path / "r"), tmp_path / "r"),
    ):
        module.build_parser().parse_args([*flags, "--out", str(tmp_path / "o.parquet")])
        paths = [Path(value) for value in flags if not value.startswith("--")]
        assert paths and all(path.is_relative_to(root) for path in paths)
    assert all(Path(value).exists() for value in module.sample_args(sample) if not value.startswith("--"))
