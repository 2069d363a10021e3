"""Format rewards: did the completion answer in the style the prompt asked for?

The released grounding regex has unescaped ``|`` and pays full format reward to any text
starting with ``<``; here a style is only granted when the parser recognised a complete
answer of that style.
"""

from __future__ import annotations

from ..parsing import Answer


def format_score(answer: Answer, style: str | None = None, single: bool = False, n_bad: int = 0) -> float:
    """1 for a complete, well-formed answer in the expected ``style``; partial credit per item.

    0 when the think/answer tags are not as asked, the answer was cut off, nothing parsed,
    it is JSON that only the lenient reader could read (``Answer.repaired``: prose around
    it, trailing commas, Python quotes, a broken object), or a non-empty answer's style
    differs from ``style`` (``None`` accepts any). End tokens after the answer and several
    fenced blocks cost nothing. With ``single`` exactly one
    well-formed object is required. Otherwise the share of well-formed objects counts,
    ``n_bad`` adding items the task cannot use; an empty list is well-formed.

    >>> from perception_r1_verl.parsing import parse_answer
    >>> format_score(parse_answer('[{"bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [5, 6]}]'), "json")
    0.5
    >>> format_score(parse_answer('<|box_start|>oops'), "box_tokens")
    0.0
    >>> format_score(parse_answer('[{"bbox_2d": [1, 2, 3, 4],}]<|im_end|>')), format_score(parse_answer('[[1, 2, 3, 4]]<|im_end|>'))
    (0.0, 1.0)
    """
    if not answer.tags_ok or answer.truncated or answer.repaired or not answer.parsed:
        return 0.0
    if style is not None and answer.style != style and answer.n_items:
        return 0.0  # "[]" says "nothing here" in every style
    bad = answer.n_invalid + n_bad
    if single:
        return 1.0 if answer.n_items == 1 and bad == 0 else 0.0
    if answer.n_items == 0:
        return 1.0
    return max(0.0, 1.0 - bad / answer.n_items)
