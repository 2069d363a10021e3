"""Parse the answers Qwen-VL models really emit (writing them: ``rewards.render``).

Accepted answer styles (``Answer.style``):

- ``json``: Qwen2.5-VL / Qwen3-VL / Qwen3.5 objects ``[{"bbox_2d": [x1, y1, x2, y2], "label": "cat"}]``
  (also ``point_2d``), fenced in ```json or bare, a single object, or a bare list of
  boxes;
- ``box_tokens``: Qwen2-VL ``<|object_ref_start|>cat<|object_ref_end|><|box_start|>(x1,y1),
  (x2,y2)<|box_end|>``, and ``<|box_start|>(x,y)<|box_end|>`` for a point;
- ``ref_box``: the same in Qwen-VL's tags, ``<ref>cat</ref><box>(x1,y1),(x2,y2)</box>``;
  in both, a box takes the label of the last ref before it;
- ``plain``: ``[x1, y1, x2, y2]`` or ``(x1,y1),(x2,y2)`` inside other text (the latter is
  what Qwen2-VL box tokens become when a decoder drops special tokens).

Any of them may sit inside ``<answer>...</answer>`` and, when the prompt asks for
thinking, after a ``<think>...</think>`` block, whose opening tag is missing when the chat
template wrote it into the prompt (Qwen3.5 from 4B up opens ``<think>\\n`` by default, so
the response is ``reasoning</think>\\n\\nanswer``); end tokens a decoder kept
(``END_TOKENS``) are dropped; several fenced blocks are read one after the other.

Reading is lenient, paying format is not. JSON that a strict parser (orjson) accepts takes
the fast path. Anything else that holds ``{`` goes to a scanner that finds every balanced
``{...}`` (string- and nesting-aware) and parses each alone, repairing trailing commas and
Python literals (single quotes, ``True``/``None``) only when strict parsing fails: JSON
after or before prose, a stray brace or a broken object in a long list, objects with
nested values; coordinates written as strings are read too. What needed a repair keeps
its boxes and labels but is marked ``repaired``, which the format reward does not pay. A
completion cut off at the length limit keeps its complete objects and is marked
``truncated``. Parsing never raises.
"""

from __future__ import annotations

import re

import numpy as np

from .answer import _NUM, MAX_ITEMS, Answer, _Collector
from .objects import _parse_json, _parse_scanned

__all__ = [
    "END_TOKENS",
    "MAX_BLOCKS",
    "MAX_CHARS",
    "MAX_ITEMS",
    "Answer",
    "answer_parts",
    "answer_text",
    "bare_count",
    "distinct_boxes",
    "parse_answer",
    "think_end",
]

# Hard caps on the work one completion can cause (a policy in a repetition loop writes
# anything): characters read, fenced blocks read, and the size of one object a Python
# literal parser may compile. What lies beyond the first two counts as truncation.
MAX_CHARS = 65536  # 8x a 2048-token response of 4-character tokens
MAX_BLOCKS = 64
# Special tokens that end a Qwen-VL turn, kept by callers that decode with special tokens.
END_TOKENS = ("<|im_end|>", "<|endoftext|>")
_ANSWER = re.compile(r"<answer>(.*?)(</answer>|$)", re.S)
# A fence opens a line (as markdown has it, and the Qwen cookbooks' parse_json reads it):
# "```" inside a JSON string is text.
_FENCE_OPEN = re.compile(r"^[ \t]*```[a-zA-Z]*", re.M)
# A markdown page (```markdown, ```md) holds code blocks of its own: inside it a fence line
# with a language opens an inner block and a bare fence line closes the innermost, as a
# human reads the page (CommonMark would end the page at the inner block's closer).
_MARKDOWN_FENCES = frozenset({"markdown", "md"})
_FENCE_LINE = re.compile(r"^[ \t]*```([a-zA-Z]*)[ \t]*$", re.M)
BARE_COUNT_DIGITS = 6  # a count the size of any image's objects, not a number spilled out


# A box's insides after its open tag: one or two "(x, y)" pairs, then the close tag. Anchored
# at a box tag and made only of spaces, digits and punctuation, so a failed match stops
# before the next tag: the matches of all tags together read each character about once.
_PAIR = rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)"
# Qwen2-VL's special tokens, and the Qwen-VL tags they replaced (still what its checkpoints
# write): ref open and close, box open and close, the pattern of a box's insides and close.
_TAG_STYLES = {
    style: (*tags, re.compile(rf"\s*{_PAIR}(?:\s*,\s*{_PAIR})?\s*{re.escape(tags[3])}"))
    for style, tags in (
        ("box_tokens", ("<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>")),
        ("ref_box", ("<ref>", "</ref>", "<box>", "</box>")),
    )
}
_PLAIN_BOX = re.compile(
    rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]"
    rf"|\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)"
)


def _parse_tags(body: str, answer: Answer, style: str) -> None:
    """Boxes (and points: one pair) in ``style``'s tags; each takes the label of the last
    ref before it, as in Qwen-VL's ``<ref>two apples</ref><box>...</box><box>...</box>``.

    A scanner: each step jumps (``str.find``) to the next ref or box tag. A ref takes the
    text up to its close tag (boxes inside it are part of the label); once a ref has no
    close tag, no later one has, so refs stop being looked for.
    """
    ref_open, ref_close, box_open, box_close, box_rest = _TAG_STYLES[style]
    col = _Collector()
    label, pos, refs = None, 0, True
    while col.n_items < MAX_ITEMS:
        b = body.find(box_open, pos)
        r = body.find(ref_open, pos, b if b >= 0 else len(body)) if refs else -1
        if r >= 0:
            end = body.find(ref_close, r + len(ref_open))
            if end >= 0:
                label, pos = body[r + len(ref_open) : end].strip(), end + len(ref_close)
                continue
            refs = False
        if b < 0:
            break
        m = box_rest.match(body, b + len(box_open))
        if m is None:
            pos = b + len(box_open)
            continue
        x1, y1, x2, y2 = m.groups()
        if x2 is None:
            col.add_point([float(x1), float(y1)])
        else:
            col.add_box([float(x1), float(y1), float(x2), float(y2)], label)
        pos = m.end()
    # Box starts that did not form a complete box are malformed or cut off, those past
    # MAX_ITEMS spam (not read): all are items and invalid, the spam counted in into().
    rest = body.count(box_open) - col.n_items
    col.n_items += rest
    col.n_invalid += max(0, rest - max(0, col.n_items - MAX_ITEMS))
    answer.truncated = body.rfind(box_open) > body.rfind(box_close)
    answer.style = style
    col.into(answer)


def _parse_plain(body: str, answer: Answer) -> None:
    col = _Collector()
    for m in _PLAIN_BOX.finditer(body):
        g = m.groups()
        col.add_box([float(v) for v in (g[:4] if g[0] is not None else g[4:])])
    if col.n_items:
        answer.style = "plain"
        col.into(answer)


def _parse_body(body: str, answer: Answer) -> None:
    bracketed = body.startswith(("[", "{"))
    if bracketed and _parse_json(body, answer):
        return  # first: a JSON label may hold "<box>"
    if "<|box_start|>" in body:
        _parse_tags(body, answer, "box_tokens")
        return
    if "<box>" in body:
        _parse_tags(body, answer, "ref_box")
        return
    if "{" in body and _parse_scanned(body, answer, bracketed):
        return
    _parse_plain(body, answer)


def _strip_end_tokens(text: str) -> str:
    """``text`` without trailing end tokens and spaces (an index walks back: no copy per token).

    >>> _strip_end_tokens("[1] <|im_end|>\\n<|endoftext|>")
    '[1]'
    """
    end = len(text)
    while True:
        while end and text[end - 1].isspace():
            end -= 1
        token = next((t for t in END_TOKENS if text.endswith(t, 0, end)), None)
        if token is None:
            return text[:end]
        end -= len(token)


def think_end(text: str) -> int:
    """Where the answer starts after ``text``'s leading think block, -1 when it has none.

    The block is ``<think>...</think>`` at the start, or ``...</think>`` with no opening tag
    before it: the chat template opened the block in the prompt, so the response begins
    inside it. An opening tag after other text is no leading block (str.find: linear).

    >>> think_end("<think>a</think>[1]"), think_end("a</think>[1]"), think_end("x<think>a</think>[1]"), think_end("[1]")
    (16, 9, -1, -1)
    """
    close = text.find("</think>")
    if close < 0:
        return -1
    opened = text.find("<think>", 0, close)
    if opened >= 0 and text[:opened].strip():
        return -1
    return close + len("</think>")


def answer_parts(completion: str, think: bool = False) -> tuple[list[str], bool, bool]:
    """The answer bodies of a completion (one per fenced block, else one), whether its
    tags are as asked, and whether it was cut. Trailing ``END_TOKENS`` are dropped.

    >>> answer_parts("<think>two cats</think><answer>[1, 2, 3, 4]</answer><|im_end|>", think=True)
    (['[1, 2, 3, 4]'], True, False)
    >>> answer_parts("two cats</think>\\n\\n<answer>[1, 2, 3, 4]</answer>", think=True)  # template-opened
    (['[1, 2, 3, 4]'], True, False)
    >>> answer_parts("```json\\n[1, 2, 3, 4]\\n```\\n```json\\n[5, 6")
    (['[1, 2, 3, 4]', '[5, 6'], True, True)
    """
    # Past MAX_CHARS the completion is spam: the rest is not read, and it counts as cut.
    capped = len(completion) > MAX_CHARS
    completion = completion[:MAX_CHARS]
    # Substring tests first: most completions have no tags, and regexes cost more.
    text = _strip_end_tokens(completion) if "<|" in completion else completion
    tags_ok = True
    end = think_end(text) if "</think>" in text else -1
    if end >= 0:
        text = text[end:]
    elif think:
        tags_ok = False
    truncated = capped
    m = _ANSWER.search(text) if "<answer>" in text else None
    if m:
        truncated = truncated or not m.group(2)
        tags_ok = tags_ok and not text[: m.start()].strip() and not text[m.end() :].strip()
        text = m.group(1)
    elif think:
        tags_ok = False
    text = text.strip()
    fence = _FENCE_OPEN.search(text) if "```" in text else None
    if fence is None:
        return [text], tags_ok, truncated
    bodies = []
    while fence is not None:  # code fences: keep their insides (str.find: a lazy regex is slower here)
        if len(bodies) == MAX_BLOCKS:  # more blocks than an answer has: spam, not read
            truncated = True
            break
        if fence.group().lstrip(" \t")[3:].lower() in _MARKDOWN_FENCES:
            end = _markdown_end(text, fence.end())
        else:
            end = text.find("```", fence.end())
        if end < 0:
            truncated = True
            end = len(text)
        bodies.append(text[fence.end() : end].strip())
        fence = _FENCE_OPEN.search(text, end + 3)
    return bodies, tags_ok, truncated


def _markdown_end(text: str, start: int) -> int:
    """Where the markdown block opened before ``start`` closes (-1: never), its own code
    blocks nested: one pass over the fence lines.

    >>> page = "```markdown\\n# Run\\n```bash\\nls\\n```\\nDone.\\n```"
    >>> page[11:_markdown_end(page, 11)]
    '\\n# Run\\n```bash\\nls\\n```\\nDone.\\n'
    >>> _markdown_end("```markdown\\n```python\\nx = 1\\n```\\n", 11)
    -1
    """
    depth = 1
    for line in _FENCE_LINE.finditer(text, start):
        depth += 1 if line.group(1) else -1
        if depth == 0:
            return line.start() + line.group().index("```")
    return -1


def bare_count(answer: Answer) -> int | None:
    """The count of an answer that is one non-negative integer and nothing else (``5``,
    ``<answer>5</answer>``), else ``None``; str methods only, linear.

    >>> bare_count(parse_answer("<answer>\\n10\\n</answer>")), bare_count(parse_answer("5 cats"))
    (10, None)
    """
    text = answer.text
    if answer.parsed or not (0 < len(text) <= BARE_COUNT_DIGITS) or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def answer_text(completion: str, think: bool = False) -> tuple[str, bool, bool]:
    """The answer part of a completion, whether its tags are as asked, and whether it was cut.

    >>> answer_text("<think>two cats</think><answer>[1, 2, 3, 4]</answer>", think=True)
    ('[1, 2, 3, 4]', True, False)
    >>> answer_text("<answer>[1, 2", think=False)
    ('[1, 2', True, True)
    >>> answer_text("[1, 2, 3, 4]", think=True)
    ('[1, 2, 3, 4]', False, False)
    """
    bodies, tags_ok, truncated = answer_parts(completion, think)
    return "\n".join(bodies), tags_ok, truncated


def _merge(parts: list[Answer], answer: Answer) -> None:
    """Several fenced blocks are one answer: their items in order, styles must agree."""
    parts = [p for p in parts if p.parsed]
    if not parts:
        return
    answer.style = parts[0].style
    answer.repaired = any(p.repaired or p.style != answer.style for p in parts)
    answer.truncated = any(p.truncated for p in parts)
    answer.n_items = sum(p.n_items for p in parts)
    answer.n_invalid = sum(p.n_invalid for p in parts)
    with_boxes = [p for p in parts if len(p.boxes)]
    if with_boxes:
        answer.boxes = np.concatenate([p.boxes for p in with_boxes])[:MAX_ITEMS]
        answer.labels = [label for p in with_boxes for label in p.labels][:MAX_ITEMS]
    points = [p.points for p in parts if len(p.points)]
    if points:
        answer.points = np.concatenate(points)[:MAX_ITEMS]
    # Past MAX_ITEMS of the blocks together: spam, counted as invalid.
    answer.n_invalid += sum(len(p.boxes) for p in parts) - len(answer.boxes)
    answer.n_invalid += sum(len(p.points) for p in parts) - len(answer.points)


def parse_answer(completion: str, think: bool = False) -> Answer:
    """Parse a completion into boxes, labels and points; never raises.

    >>> a = parse_answer('```json\\n[{"bbox_2d": [10, 20, 30, 40], "label": "cat"}]\\n```')
    >>> a.style, a.boxes.tolist(), a.labels, a.n_invalid
    ('json', [[10.0, 20.0, 30.0, 40.0]], ['cat'], 0)
    >>> a = parse_answer('[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6')
    >>> a.boxes.tolist(), a.n_items, a.n_invalid, a.truncated
    ([[1.0, 2.0, 3.0, 4.0]], 2, 1, True)
    >>> a = parse_answer('The cat: {"bbox_2d": [1, 2, 3, 4], "label": "cat",}')
    >>> a.boxes.tolist(), a.labels, a.repaired
    ([[1.0, 2.0, 3.0, 4.0]], ['cat'], True)
    >>> a = parse_answer("<|object_ref_start|>dog<|object_ref_end|><|box_start|>(1,2),(30,40)<|box_end|>")
    >>> a.style, a.boxes.tolist(), a.labels
    ('box_tokens', [[1.0, 2.0, 30.0, 40.0]], ['dog'])
    >>> parse_answer("<not an answer").style
    'none'
    """
    if not isinstance(completion, str):
        return Answer()
    bodies, tags_ok, truncated = answer_parts(completion, think)
    if len(bodies) == 1:
        answer = Answer(text=bodies[0], tags_ok=tags_ok)
        _parse_body(bodies[0], answer)
    else:
        answer = Answer(text="\n".join(bodies), tags_ok=tags_ok)
        parts = [Answer(text=body) for body in bodies]
        for body, part in zip(bodies, parts):
            _parse_body(body, part)
        _merge(parts, answer)
    answer.truncated = answer.truncated or truncated
    return answer


def distinct_boxes(objects: list) -> list:
    """Objects with their first occurrence of each box: a box repeated is one object.

    >>> distinct_boxes([{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [1, 2, 3, 4], "label": "b"}])
    [{'bbox_2d': [1, 2, 3, 4], 'label': 'a'}]
    """
    first = {}
    for obj in objects:
        first.setdefault(tuple(obj["bbox_2d"]), obj)
    return list(first.values())
