"""The package's layering: verl is met only in ``plugin/``, and no import goes round in a circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import perception_r1_verl

PACKAGE = Path(perception_r1_verl.__file__).parent
HEAVY = ("verl", "torch", "transformers", "vllm", "ray")


def module_names() -> dict[str, Path]:
    """Every module of the package by dotted name (packages by their ``__init__``)."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("perception_r1_verl", *path.relative_to(PACKAGE).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def test_everything_outside_the_plugin_folder_imports_without_verl_or_torch():
    """Rewards, parsing, frames, families, prompts, data, eval and the recipe's preflight all
    import in a process where none of verl, torch, transformers, vLLM or Ray gets loaded
    (they are imported inside the functions that need them), and without ``plugin/``."""
    pure = [m for m in module_names() if ".plugin" not in m and not m.endswith("__main__")]
    code = (
        "import importlib, sys\n"
        f"for name in {pure!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))\n"
        "print(sorted(m for m in sys.modules if m.startswith('perception_r1_verl.plugin')))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["[]", "[]"], run.stdout
    assert len(pure) > 60


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """The package modules ``name`` imports anywhere in its file (function bodies included,
    ``if TYPE_CHECKING:`` blocks not): a circle imported at call time is still a circle."""
    tree = ast.parse(path.read_text())
    skip = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for node in ast.walk(stmt)
    }
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            base = f"{base}.{node.module}" if node.level and node.module else (base if node.level else node.module)
            for alias in node.names:  # "from pkg import module" imports the module
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def test_the_package_has_no_import_circle():
    modules = module_names()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    circles, done, stack = [], set(), []

    def visit(name):
        if name in stack:
            circles.append(stack[stack.index(name) :] + [name])
            return
        if name in done:
            return
        stack.append(name)
        for other in sorted(graph[name]):
            visit(other)
        stack.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
    assert sum(map(len, graph.values())) > 100  # the graph is really read
    assert circles == [], "\n".join(" -> ".join(c) for c in circles)
