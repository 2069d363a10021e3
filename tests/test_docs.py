"""Every command in the README and docs/ runs somewhere, and every relative link resolves.

Each shell command of a fenced ```bash block is covered in one of three ways, else the test
fails naming it:

(a) CI runs it: a ``bash`` script that ``.ci/run`` runs (``scripts/test.sh``, ``scripts/e2e.sh``);
(b) the real program accepts it: console scripts, ``python -m`` modules and ``python
    script.py`` are run through their own ``main`` up to their argument parser, which must
    accept the whole command line (flags, choices, types, required ones); ``bash
    recipes/<task>.sh`` must exist, every environment variable it is given must be read
    by the recipe code, and its Hydra overrides must compose on the recipe's config;
    ``ray`` subcommands must accept their flags;
(c) it is in ``ALLOW``, with the test that exercises it (which must exist).

Nothing is trained, downloaded or loaded: parsing stops at the parser.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import re
import runpy
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# (c): commands no parser can check here, each with the test that runs what it does.
ALLOW = {
    "pip install torch==2.11.0": "tests/test_install.py::test_a_cuda_machine_installs_torch_then_verl_vllm_with_the_package_then_flash_attn",
    "pip install -e '.[gpu]'": "tests/test_install.py::test_a_cuda_machine_installs_torch_then_verl_vllm_with_the_package_then_flash_attn",
    "pip install wheel packaging psutil ninja": "tests/test_install.py::test_a_cuda_machine_installs_torch_then_verl_vllm_with_the_package_then_flash_attn",
    "pip install --no-build-isolation flash-attn==2.8.3": "tests/test_install.py::test_a_cuda_machine_installs_torch_then_verl_vllm_with_the_package_then_flash_attn",
}

ENV_ASSIGNMENT = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$", re.S)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
FOR_LOOP = re.compile(r"^\s*for (\w+) in ([^;\n]+); do\n(.*?)^\s*done\s*$", re.S | re.M)


@dataclass
class Command:
    where: str  # file:line of the block
    text: str
    env: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)


def expand_loops(block: str) -> str:
    """``for v in a b; do ...; done`` written out once per value.

    >>> expand_loops("for t in a b; do\\n  echo $t ${t}.x\\ndone\\n")
    '  echo a a.x\\n  echo b b.x\\n'
    """

    def unroll(m: re.Match) -> str:
        var, values, body = m.group(1), m.group(2).split(), m.group(3)
        return "".join(re.sub(rf"\$\{{{var}\}}|\${var}\b", value, body) for value in values)

    return FOR_LOOP.sub(unroll, block)


def split_commands(line: str) -> list[list[str]]:
    """One shell line as its commands' words: comments dropped, split at ``&&``, ``;``, ``|``.

    >>> split_commands("pip install a && pip install 'b[c]'   # why")
    [['pip', 'install', 'a'], ['pip', 'install', 'b[c]']]
    """
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands, words = [], []
    for word in lexer:
        if word in ("&&", ";", "|", "||"):
            commands.append(words)
            words = []
        else:
            words.append(word)
    return [c for c in [*commands, words] if c]


def block_commands(text: str, label: str) -> list[Command]:
    """Every command of the ```bash blocks of one markdown text."""
    found = []
    for m in FENCE.finditer(text):
        if m.group(1) != "bash":
            continue
        where = f"{label}:{text[: m.start()].count(chr(10)) + 1}"
        for line in expand_loops(m.group(2).replace("\\\n", " ")).splitlines():
            for words in split_commands(line):
                env = {}
                while words and (a := ENV_ASSIGNMENT.match(words[0])):
                    env[a.group(1)] = a.group(2)
                    words = words[1:]
                found.append(Command(where, line.split(" #")[0].strip(), env, words))
    return found


def doc_commands(path: Path) -> list[Command]:
    return block_commands(path.read_text(), str(path.relative_to(ROOT)))


COMMANDS = [c for doc in DOCS for c in doc_commands(doc)]


# --- (a) CI ---------------------------------------------------------------------------------


def ci_scripts() -> set[str]:
    """The scripts ``.ci/run`` runs with ``bash``."""
    return {
        words[1]
        for line in (ROOT / ".ci/run").read_text().splitlines()
        for words in split_commands(line)
        if words[:1] == ["bash"]
    }


# --- (b) the real parsers -------------------------------------------------------------------


class _Parsed(Exception):
    """Raised by the patched parser once it has accepted a command line."""


def parser_accepts(run, argv: list[str], skip_progs=()) -> str | None:
    """None when ``run()``'s argument parser accepts ``argv`` (``sys.argv``), else why not.

    ``run`` stops at the first parse that is not one of ``skip_progs`` (a dispatcher that reads
    only its subcommand), so nothing after parsing runs; ``--help`` counts as accepted.
    """
    original = argparse.ArgumentParser.parse_args

    def intercept(self, args=None, namespace=None):
        parsed = original(self, args, namespace)
        if self.prog in skip_progs:
            return parsed
        raise _Parsed

    err = io.StringIO()
    with (
        mock.patch.object(argparse.ArgumentParser, "parse_args", intercept),
        mock.patch.object(sys, "argv", argv),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(err),
    ):
        try:
            run()
        except _Parsed:
            return None
        except SystemExit as e:
            return None if e.code in (0, None) else f"exit {e.code}: {err.getvalue().strip()}"
    return "its main returned without parsing the command line"


def console_script(name: str):
    """The function ``pyproject.toml`` installs as command ``name``."""
    m = re.search(rf'^{re.escape(name)} = "([\w.]+):(\w+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert m, f"pyproject.toml installs no command {name}"
    return getattr(importlib.import_module(m.group(1)), m.group(2))


def check_python(argv: list[str]) -> str | None:
    """``python -m MODULE args`` or ``python SCRIPT.py args``, through the module's own parser."""
    if argv[1] == "-m":
        module, args = argv[2], argv[3:]
        return parser_accepts(
            lambda: runpy.run_module(module, run_name="__main__", alter_sys=True),
            [module, *args],
            ("perception-r1-prep",),
        )
    script = ROOT / argv[1]
    if not script.is_file():
        return f"{argv[1]} does not exist"
    return parser_accepts(lambda: runpy.run_path(str(script), run_name="__main__"), [str(script), *argv[2:]])


def check_ray(argv: list[str]) -> str | None:
    import click
    from ray.scripts.scripts import cli

    sub = cli.commands.get(argv[1])
    if sub is None:
        return f"ray has no subcommand {argv[1]!r}"
    try:
        sub.make_context(argv[1], argv[2:])
    except click.ClickException as e:
        return e.format_message()
    return None


RECIPE_CODE = [
    *sorted((ROOT / "recipes").glob("*.sh")),
    ROOT / "scripts/env.sh",
    *sorted((ROOT / "perception_r1_verl").glob("recipe*.py")),
    *sorted((ROOT / "perception_r1_verl").glob("recipe/**/*.py")),
    *sorted((ROOT / "recipes").glob("config/*.yaml")),
]


def env_read_by_recipes(name: str) -> bool:
    """Whether the recipe code reads environment variable ``name`` (shell, Python or YAML)."""
    pattern = re.compile(rf"""\$\{{?{name}\b|["']{name}["']|oc\.env:{name}\b""")
    return any(pattern.search(path.read_text()) for path in RECIPE_CODE)


# verl's own config folder, found without importing verl (which takes seconds)
VERL_CONFIG = Path(importlib.util.find_spec("verl").submodule_search_locations[0]) / "trainer" / "config"
_composed: dict[tuple, str | None] = {}


def overrides_compose(config_dir: Path, name: str, overrides: list[str]) -> str | None:
    """None when Hydra composes config ``name`` of ``config_dir`` with ``overrides``, as
    ``main_ppo`` does at launch: a plain key must exist, a ``+`` key must not."""
    key = (config_dir, name, tuple(overrides))
    if key not in _composed:
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(config_dir), version_base=None):
                compose(config_name=name, overrides=overrides)
            _composed[key] = None
        except Exception as e:  # Hydra's composition errors name the override
            _composed[key] = f"{type(e).__name__}: {e}"
    return _composed[key]


def main_ppo_config(argv: list[str]) -> tuple[Path, str, list[str]]:
    """The config folder and name a ``main_ppo`` command line selects, and its overrides.

    As in Hydra, a relative ``--config-path`` is relative to ``main_ppo.py``'s folder; ``$PWD``
    is the repository (commands run from its root).

    >>> d, name, rest = main_ppo_config(["--config-path", "$PWD/recipes/config", "--config-name=coco_det", "a=1"])
    >>> d == ROOT / "recipes/config", name, rest
    (True, 'coco_det', ['a=1'])
    """
    config_dir, name, overrides = VERL_CONFIG, "ppo_trainer", []
    words = iter(argv)
    for word in words:
        flag, eq, value = word.partition("=")
        if flag not in ("--config-path", "-cp", "--config-name", "-cn"):
            overrides.append(word)
            continue
        value = value if eq else next(words, "")
        if flag in ("--config-name", "-cn"):
            name = value
        else:
            value = re.sub(r"^(\$PWD|\$\{PWD\}|\$\(pwd\))", str(ROOT), value)
            config_dir = (VERL_CONFIG.parent / value).resolve()
    return config_dir, name, overrides


def check_recipe(cmd: Command) -> str | None:
    script = cmd.argv[1]
    if not (ROOT / script).is_file():
        return f"{script} does not exist"
    unread = [name for name in cmd.env if not env_read_by_recipes(name)]
    if unread:
        return f"the recipe code never reads {', '.join(unread)}"
    overrides = cmd.argv[2:]
    if not overrides:
        return None
    recipe_config = ROOT / "recipes/config" / f"{Path(script).stem}.yaml"
    if recipe_config.is_file():
        return overrides_compose(recipe_config.parent, recipe_config.stem, overrides)
    return overrides_compose(VERL_CONFIG, "ppo_trainer", overrides)


def pytest_targets_missing(args: list[str]) -> str | None:
    """Why pytest arguments name tests that do not exist (CI runs every test that does)."""
    missing = [a for a in args if not a.startswith("-") and not (ROOT / a.split("::")[0]).exists()]
    return f"pytest targets that do not exist: {missing}" if missing else None


def uncovered(cmd: Command) -> str | None:
    """None when ``cmd`` is covered by (a), (b) or (c); else why it is not."""
    argv = cmd.argv
    if argv[0] == "bash":
        if argv[1] in ci_scripts() or argv[1] == ".ci/run":
            return pytest_targets_missing(argv[2:])  # scripts/test.sh passes its arguments to pytest
        if argv[1].startswith("recipes/"):
            return check_recipe(cmd)
        return f"{argv[1]} is not run by .ci/run"
    if argv[0] in ("perception-r1-prep", "perception-r1-eval"):
        return parser_accepts(console_script(argv[0]), argv, ("perception-r1-prep",))
    if Path(argv[0]).name in ("python", "python3"):  # a venv's too (.venv-e2e/bin/python)
        if argv[1:3] == ["-m", "verl.trainer.main_ppo"]:
            return overrides_compose(*main_ppo_config(argv[3:]))
        if argv[1:3] == ["-m", "pytest"]:
            return pytest_targets_missing(argv[3:])
        return check_python(argv)
    if Path(argv[0]).name in ("pytest", "ruff"):  # scripts/test.sh runs both on the whole tree
        return pytest_targets_missing(argv[1:]) if Path(argv[0]).name == "pytest" else None
    if argv[0] == "ray":
        return check_ray(argv)
    test = ALLOW.get(shlex.join(argv))
    if test is None:
        return "neither run by .ci/run, nor checked against a parser, nor in test_docs.ALLOW"
    path, _, name = test.partition("::")
    if not re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M):
        return f"ALLOW names {test}, which does not exist"
    return None


@pytest.mark.parametrize("cmd", COMMANDS, ids=[f"{c.where}:{c.argv[0]}" for c in COMMANDS])
def test_every_documented_command_is_exercised(cmd):
    why = uncovered(cmd)
    assert why is None, f"{cmd.where}: `{shlex.join(cmd.argv)}` (in `{cmd.text}`) is not covered: {why}"


def test_the_docs_hold_the_commands_a_user_needs():
    """The extraction itself: a broken regex would find nothing and pass everything."""
    programs = {(c.argv[0], c.argv[1]) for c in COMMANDS}
    for expected in [
        ("bash", "recipes/coco_det.sh"),
        ("bash", "scripts/test.sh"),
        ("perception-r1-prep", "coco_det"),
        ("perception-r1-eval", "score"),
        ("perception-r1-eval", "suite"),
        ("ray", "start"),
    ]:
        assert expected in programs
    assert {"NNODES", "N_GPUS_PER_NODE", "CURRICULUM", "LORA_RANK", "MIX"} <= {k for c in COMMANDS for k in c.env}


@pytest.mark.parametrize(
    "line",
    [
        "python3 -m verl.trainer.main_ppo --config-path config --config-name ppo_trainer trainer.total_epochs=1",
        "python -m pytest tests/test_docs.py -x",
        "perception-r1-prep --help",
        "ray stop",
    ],
)
def test_a_command_the_real_programs_accept_is_covered(line):
    (cmd,) = block_commands(f"```bash\n{line}\n```\n", "test")
    assert uncovered(cmd) is None


@pytest.mark.parametrize(
    "line",
    [
        "perception-r1-eval score --data d.parquet --out o",  # --responses is required
        "perception-r1-eval generate --model m --data d --out o --tp four",
        "perception-r1-prep coco_det --annotations a.json --out o.parquet --no-such-flag",
        "perception-r1-prep no_such_source --out o.parquet",
        "CURRICULUMS=1 bash recipes/coco_det.sh",
        "bash recipes/coco_det.sh trainer.no_such_key=2",
        "bash recipes/no_such_task.sh",
        "bash scripts/test.sh tests/no_such_test.py",
        "python -m pytest tests/no_such_test.py -x",
        "python3 -m verl.trainer.main_ppo --config-path $PWD/recipes/no_such_dir --config-name coco_det",
        "python3 -m verl.trainer.main_ppo trainer.total_epochs=1 +trainer.total_epochs=2",
        "ray start --no-such-flag",
        "python bench/estimate_memory.py --no-such-flag",
        "pip install something-else",
    ],
)
def test_a_command_no_check_covers_is_reported(line):
    (cmd,) = block_commands(f"```bash\n{line}\n```\n", "test")
    assert uncovered(cmd) is not None


# --- links ----------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The markdown without fenced blocks and inline code (no links or headings there)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading.

    >>> anchor("Memory per card: an ESTIMATE")
    'memory-per-card-an-estimate'
    >>> anchor("RefCOCO / RefCOCO+ / RefCOCOg (grounding)")
    'refcoco--refcoco--refcocog-grounding'
    """
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"`([^`\n]*)`", r"\1", FENCE.sub("", path.read_text()))
    return {anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def broken_links(doc: Path) -> list[str]:
    """The relative links of ``doc`` whose file, or heading in a markdown file, is missing."""
    broken = []
    for target in LINK.findall(prose(doc.read_text())):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        file, _, fragment = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(f"{target} (no file)")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path):
            broken.append(f"{target} (no heading #{fragment})")
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_relative_link_points_to_an_existing_file_and_heading(doc):
    broken = broken_links(doc)
    assert not broken, f"{doc.relative_to(ROOT)}: {broken}"


def test_a_broken_link_or_heading_is_reported(tmp_path):
    (tmp_path / "other.md").write_text("# A `code` heading\n\n```bash\n# not a heading\n```\n")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "[ok](other.md#a-code-heading) [ok](https://x.org/none.md) [self](#top) `[code](none.md)`\n"
        "# Top\n[gone](none.md) [bad](other.md#not-a-heading)\n"
    )
    assert broken_links(doc) == ["none.md (no file)", "other.md#not-a-heading (no heading #not-a-heading)"]
