"""One registry per layer (reward, prompt, metric), each keyed by the task name.

A task is the same name in every layer: ``rewards`` registers its reward class,
``prompts`` its prompt builder, ``eval.metrics`` its metric. See docs/adding_a_task.md.
"""

from __future__ import annotations


class Registry(dict):
    """Task name -> one layer's hook; a dict that refuses a second hook for a task.

    >>> r = Registry("greeting")
    >>> @r.register("hello")
    ... def hello():
    ...     return "hi"
    >>> r.lookup("hello")()
    'hi'
    >>> r.lookup("bye")
    Traceback (most recent call last):
    ...
    ValueError: unknown task 'bye': no greeting is registered for it; known: ['hello']
    """

    def __init__(self, layer: str, noun: str = "task"):
        super().__init__()
        self.layer, self.noun = layer, noun

    def register(self, task: str):
        """Decorator: make ``obj`` the hook of ``task`` (the same object again is a no-op)."""

        def decorator(obj):
            if self.get(task, obj) is not obj:
                raise ValueError(f"task {task!r} already has a {self.layer}: {self[task]}")
            self[task] = obj
            return obj

        return decorator

    def lookup(self, task: str):
        """The hook of ``task``; a ``ValueError`` naming the known tasks when there is none."""
        try:
            return self[task]
        except (KeyError, TypeError):  # TypeError: an unhashable name
            known = sorted(self)
            raise ValueError(
                f"unknown {self.noun} {task!r}: no {self.layer} is registered for it; known: {known}"
            ) from None
