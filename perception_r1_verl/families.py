"""One record per Qwen-VL model family: everything the layers need to know of a family.

A family is the ``model_family`` of a row's ``extra_info`` and the ``--model-family`` /
``MODEL_FAMILY`` value; its record says how the processor resizes images
(``resize_factor``, ``min_pixels``), in which frame the model answers boxes
(``answer_frame``: ``"pixels"`` of the resized image, or ``"relative"`` 0-1000), in which
syntax (``answer_style``, an ``Answer.style``), and how a model is recognised: by its
``config.json`` ``model_type`` (``model_types``) or, for a hub name, by its spelling
(``spellings``). Two switches concern the chat template and the text model:
``thinking_switch`` (the template takes ``enable_thinking``) and ``linear_attention`` (the
text model has recurrent layers that packed sequences must not share). A new family is one
more record in ``FAMILIES``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Family:
    name: str
    resize_factor: int  # patch size x spatial merge: the side of one visual token, in pixels
    # The processor's minimum image area: Qwen3-VL's enlarges anything under 65536 pixels (its
    # size.shortest_edge), so an image verl resized with a smaller minimum would reach the model
    # at another size.
    min_pixels: int
    answer_frame: str  # "pixels" (of the image the model was fed) or "relative" (0-1000)
    answer_style: str  # the Answer.style the prompts ask for: "json" or "box_tokens"
    model_types: tuple[str, ...]  # config.json model_type values
    spellings: tuple[str, ...]  # in a model name lower-cased with "_" and "." as "-"
    # The chat template reads ``enable_thinking`` (and, left to itself, may open a think block).
    thinking_switch: bool = False
    # Linear-attention (Gated DeltaNet) layers: a recurrent state runs along the sequence, so
    # packed sequences (verl's use_remove_padding) need kernels that restart it per sequence.
    linear_attention: bool = False


# Qwen2-VL answers in box tokens, 0-1000; Qwen2.5-VL in JSON, in pixels of the resized
# image; Qwen3-VL in JSON, 0-1000, with vision patch 16 (factor 32) and a 65536 minimum.
# Qwen3.5 reuses Qwen3-VL's vision side (transformers configuration_qwen3_5.py: patch_size 16,
# spatial_merge_size 2; its processor is Qwen3VLProcessor), hence Qwen3-VL's factor, minimum
# and answers (0-1000 JSON: ms-swift's Qwen3.5 template keeps norm1000; no official document
# states it). Its text model mixes Gated DeltaNet and full attention layers (3:1), and its
# chat template takes enable_thinking (from 4B up it opens <think> unless told not to).
FAMILIES = {
    f.name: f
    for f in (
        Family("qwen2_5_vl", 28, 3136, "pixels", "json", ("qwen2_5_vl",), ("qwen2-5-vl",)),
        Family("qwen2_vl", 28, 3136, "relative", "box_tokens", ("qwen2_vl",), ("qwen2-vl",)),
        Family("qwen3_vl", 32, 65536, "relative", "json", ("qwen3_vl", "qwen3_vl_moe"), ("qwen3-vl",)),
        Family(
            "qwen3_5",
            32,
            65536,
            "relative",
            "json",
            ("qwen3_5", "qwen3_5_moe"),
            ("qwen3-5",),
            thinking_switch=True,
            linear_attention=True,
        ),
    )
}
MODEL_FAMILIES = tuple(FAMILIES)


def family(name: str) -> Family:
    """The record of family ``name``; a ValueError naming the choices when there is none.

    >>> family("qwen3_vl").resize_factor
    32
    >>> family("llava")
    Traceback (most recent call last):
    ...
    ValueError: unknown model family 'llava'; choose one of ('qwen2_5_vl', 'qwen2_vl', 'qwen3_vl', 'qwen3_5')
    """
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model family {name!r}; choose one of {MODEL_FAMILIES}") from None


def answer_style(name: str | None) -> str | None:
    """The answer style family ``name`` is prompted for; None for no (or an unknown) family.

    >>> answer_style("qwen2_vl"), answer_style("qwen3_vl"), answer_style(None)
    ('box_tokens', 'json', None)
    """
    record = FAMILIES.get(name) if isinstance(name, str) else None
    return record.answer_style if record else None


def chat_template_kwargs(name: str, think: bool = False) -> dict:
    """What to pass the chat template of family ``name`` (verl's ``data.apply_chat_template_kwargs``).

    A family whose template takes ``enable_thinking`` is always told, so the prompt is the
    same whatever the size's default (Qwen3.5 opens ``<think>`` from 4B up, not at 0.8B/2B);
    other templates get nothing, as before.

    >>> chat_template_kwargs("qwen3_5"), chat_template_kwargs("qwen3_5", think=True), chat_template_kwargs("qwen2_vl")
    ({'enable_thinking': False}, {'enable_thinking': True}, {})
    """
    return {"enable_thinking": bool(think)} if family(name).thinking_switch else {}


def family_of_model(model: str | Path) -> str:
    """The family of a model: a local folder by its ``config.json`` ``model_type``, a hub
    name by its spelling. A ValueError says why when it is neither known nor readable:
    the caller asks for the family instead of guessing one.

    >>> family_of_model("Qwen/Qwen2.5-VL-3B-Instruct"), family_of_model("org/my_qwen2_vl_ft")
    ('qwen2_5_vl', 'qwen2_vl')
    >>> family_of_model("Qwen/Qwen3.5-4B-Base"), family_of_model("Qwen/Qwen3.5-35B-A3B")
    ('qwen3_5', 'qwen3_5')
    >>> family_of_model("Qwen/Qwen3-8B")
    Traceback (most recent call last):
    ...
    ValueError: Qwen/Qwen3-8B: the name spells no known model family
    """
    path = Path(model).expanduser()
    if path.is_dir():
        config = path / "config.json"
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (OSError, ValueError, AttributeError) as e:
            raise ValueError(f"{model}: cannot read the model_type of {config}: {e}") from None
        found = [f.name for f in FAMILIES.values() if model_type in f.model_types]
        if not found:
            raise ValueError(
                f"{model}: config.json model_type {model_type!r} is no known model family {MODEL_FAMILIES}"
            )
        return found[0]
    name = path.name.lower().replace("_", "-").replace(".", "-")
    found = [f.name for f in FAMILIES.values() if any(s in name for s in f.spellings)]
    if not found:
        raise ValueError(f"{model}: the name spells no known model family")
    if len(found) > 1:
        raise ValueError(f"{model}: the name spells several model families ({', '.join(found)})")
    return found[0]
