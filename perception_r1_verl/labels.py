"""The one rule by which labels and category names compare, in rewards, evaluation and checks.

Two labels name the same category when they agree after Unicode NFKC normalisation (full-
width letters are letters), case folding and collapsing every run of whitespace to one
space, ends stripped. Nothing else is forgiven: ``"traffic_light"`` and ``"cats"`` are
other names.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache


def normalise_label(label) -> str:
    """The form a label is compared in; ``""`` for a non-string (no label).

    >>> normalise_label(" Traffic  light\\n"), normalise_label("ＣＡＴ"), normalise_label("Straße")
    ('traffic light', 'cat', 'strasse')
    >>> normalise_label(None)
    ''
    """
    return _normalised(label) if isinstance(label, str) else ""


@lru_cache(maxsize=1 << 16)  # rollouts repeat their labels: the reward looks each up often
def _normalised(label: str) -> str:
    if not label.isascii():
        label = unicodedata.normalize("NFKC", label)
    return " ".join(label.casefold().split())
