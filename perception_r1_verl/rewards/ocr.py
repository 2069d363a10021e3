"""Page OCR: 1 - normalised Levenshtein distance over characters (the paper's edit distance)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import ClassVar

from rapidfuzz.distance import Levenshtein

from ..parsing import answer_text
from .registry import register
from .render import render_text

WHITESPACE_RULES = ("collapse", "remove", "exact")
_SPACES = re.compile(r"\s+")


def normalise_text(text: str, whitespace: str = "collapse") -> str:
    """NFC-normalise and apply the whitespace rule.

    ``collapse`` (default) turns every run of whitespace, newlines included, into one space
    and strips the ends, so line-wrapping differences cost nothing; ``remove`` drops all
    whitespace (for Chinese and Japanese pages); ``exact`` keeps it as is.

    >>> normalise_text("  Hello\\n\\n  world ")
    'Hello world'
    >>> normalise_text("中 文", "remove")
    '中文'
    >>> normalise_text("e\\u0301") == "\\u00e9"
    True
    """
    text = unicodedata.normalize("NFC", text)
    if whitespace == "collapse":
        return _SPACES.sub(" ", text).strip()
    if whitespace == "remove":
        return _SPACES.sub("", text)
    return text


def edit_similarity(prediction: str, reference: str) -> float:
    """1 - Levenshtein distance / length of the longer string, over Unicode code points.

    >>> edit_similarity("kitten", "sitting")
    0.5714285714285714
    >>> edit_similarity("", "")
    1.0
    """
    return 1.0 - Levenshtein.normalized_distance(prediction, reference)


@register("ocr")
@dataclass(frozen=True)
class OCRReward:
    """``text_weight * edit_similarity + format_weight * format``, in ``[0, text_weight + format_weight]``.

    The answer is the text inside ``<answer>`` tags (or the whole completion). Format is 1
    when the tags are as the prompt asked and the answer is complete and non-empty (empty
    is right only for an empty page).

    >>> gt = OCRReward.prepare({"text": "Hello world"})
    >>> OCRReward()("Hello  world", gt)["score"]
    2.0
    >>> round(OCRReward()("Hello", gt)["edit_similarity"], 3)
    0.455
    """

    components: ClassVar[tuple] = ("edit_similarity", "format")
    text_weight: float = 1.0
    format_weight: float = 1.0
    whitespace: str = "collapse"

    def __post_init__(self):
        if self.whitespace not in WHITESPACE_RULES:
            raise ValueError(f"whitespace must be one of {WHITESPACE_RULES}, got {self.whitespace!r}")

    @property
    def max_score(self) -> float:
        return self.text_weight + self.format_weight

    @staticmethod
    def render_answer(gt: dict, model_family: str, think: bool = False) -> str:
        """The exact answer: the page's text, as it is (every family writes text alike).

        >>> OCRReward.render_answer({"text": "Hello"}, "qwen3_vl")
        'Hello'
        """
        return render_text(gt["text"], think)

    @staticmethod
    def prepare(gt: dict) -> str:
        text = gt["text"]
        if not isinstance(text, str):
            raise ValueError(f"ocr ground truth text must be a string, got {type(text).__name__}")
        return text

    def __call__(self, completion: str, gt: str, think: bool = False, style: str | None = None) -> dict:
        text, tags_ok, truncated = answer_text(completion if isinstance(completion, str) else "", think)
        prediction = normalise_text(text, self.whitespace)
        reference = normalise_text(gt, self.whitespace)
        sim = edit_similarity(prediction, reference)
        fmt = float(tags_ok and not truncated and (bool(prediction) or not reference))
        return {
            "score": self.text_weight * sim + self.format_weight * fmt,
            "edit_similarity": sim,
            "format": fmt,
        }
