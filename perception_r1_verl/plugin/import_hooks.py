"""Run a patch on a module right after Python executes it, before any importer uses it.

The plugin's wrappers (``step_metrics``) and fixes (``verl_patches``) must change verl's
modules before other modules bind their names with ``from ... import``; this finder hooks
the import of the named modules only, and patches modules already imported at once.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Callable


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Runs the patches of a module right after it executes, before any importer uses it."""

    def __init__(self):
        self.patches: dict[str, list[Callable]] = {}

    def find_spec(self, name, path=None, target=None):
        if name not in self.patches:
            return None
        others = (f for f in sys.meta_path if f is not self and hasattr(f, "find_spec"))
        spec = next((s for f in others if (s := f.find_spec(name, path, target)) is not None), None)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute = spec.loader.exec_module

        def execute_and_patch(module):
            execute(module)
            for patch in self.patches[name]:
                patch(module)

        spec.loader.exec_module = execute_and_patch  # this spec's loader only: one import
        return spec


_finder = _PatchOnImport()


def on_import(name: str, patch: Callable) -> None:
    """Call ``patch(module)`` on module ``name`` now if it is imported, and whenever it is
    (re)executed by an import; ``patch`` must be idempotent and handle its own errors."""
    if not any(finder is _finder for finder in sys.meta_path):
        sys.meta_path.insert(0, _finder)
    if patch not in _finder.patches.setdefault(name, []):
        _finder.patches[name].append(patch)
    if name in sys.modules:
        patch(sys.modules[name])
