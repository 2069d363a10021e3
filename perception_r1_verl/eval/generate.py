"""Greedy batch generation over a ``data_prep`` split, resumable, with vLLM or transformers.

Each row is presented as verl's ``RLHFDataset`` presents it: every ``<image>`` in the chat
``prompt`` becomes an image content item, the processor's chat template is applied with
``add_generation_prompt=True``, and each image is converted to RGB and resized with the
Qwen-VL rule (``frames.smart_resize``, factor = patch size x merge size, the row's
``min_pixels`` / ``max_pixels``) exactly as ``qwen_vl_utils.fetch_image`` does. A row whose
resized size differs from its ``extra_info.input_size`` stops the run: the model would
answer in another frame than the ground truth (a split prepared for another family).

Output: one ``{"index": ..., "response": ..., "finish_reason": ...}`` line per row,
appended and flushed after each batch. ``finish_reason`` is ``"length"`` when the answer
ran to ``max_new_tokens`` without ending (vLLM's own ``finish_reason``; transformers: no
end token among the generated ids and as many of them as the limit allowed), else
``"stop"``.

With ``logprobs=True`` (``--logprobs``) each line also holds ``logprobs``, the
log-probability of every generated token of ``response`` (4 decimals), and
``token_ends``, the character offset in ``response`` where each token ends, so ``score``
can find the tokens that spell each box. When the tokens' own texts do not spell the
response (a character split across tokens), the line says so in ``logprobs_error``
instead: no offsets are better than wrong ones. Rows whose index is already in the file are skipped, so a rerun resumes an
interrupted one; a last line cut off by the interruption is dropped first. Special tokens
such as ``<|box_start|>`` are kept (Qwen2-VL's labels live in them); only the
end-of-sequence markers are removed.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import time
from io import BytesIO
from pathlib import Path

import orjson
import pyarrow.parquet as pq
from PIL import Image

from ..data.images import to_rgb
from ..families import chat_template_kwargs
from ..frames import smart_resize
from ..outputs import check_output
from ..parsing import END_TOKENS
from .dataset import read_responses

_PLACEHOLDER = re.compile(r"(<image>)")
# qwen_vl_utils' bounds when a row gives none: 4 and 16384 tokens of factor x factor pixels.
_MIN_TOKENS, _MAX_TOKENS = 4, 16384


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The Hugging Face model folder inside ``path`` (itself, or verl's ``huggingface/``).

    An unmerged verl FSDP checkpoint raises with the merge command to run.
    """
    path = Path(path)
    for candidate in (path, path / "huggingface", path / "actor" / "huggingface"):
        has_weights = any(candidate.glob("*.safetensors")) or any(candidate.glob("*.bin"))
        if (candidate / "config.json").exists() and has_weights:
            return candidate
    actor = path / "actor" if (path / "actor").is_dir() else path
    if any(actor.glob("model_world_size_*")) or (actor / "huggingface").is_dir():
        raise ValueError(
            f"{path} is an unmerged verl checkpoint; merge it first: python -m verl.model_merger merge "
            f"--backend fsdp --local_dir {actor} --target_dir {actor}/merged_hf"
        )
    raise ValueError(f"{path} holds no Hugging Face model (config.json and weights)")


LORA_ADAPTER = "lora_adapter"  # where verl's model merger puts a LoRA run's adapter, beside the base weights
LORA_FOLDED = "lora_folded"


def fold_lora(model_dir: Path, log=print) -> Path:
    """The model to evaluate in ``model_dir``: itself, or with its LoRA adapter folded in.

    verl's merger writes a LoRA run as the *base* weights plus ``lora_adapter/`` (PEFT);
    loading the folder as a plain model would silently evaluate the base model. The
    adapter is merged into the weights once, into ``model_dir/lora_folded/``, which later
    calls reuse (vLLM and transformers then load an ordinary model).
    """
    adapter = model_dir / LORA_ADAPTER
    if not (adapter / "adapter_config.json").exists():
        return model_dir
    folded = model_dir / LORA_FOLDED
    if (folded / "config.json").exists() and any(folded.glob("*.safetensors")):
        return folded
    try:
        from peft import PeftModel
    except ImportError:
        raise ValueError(
            f"{model_dir} holds a LoRA adapter ({adapter}); folding it in needs peft: pip install peft"
        ) from None
    from transformers import AutoModelForImageTextToText

    log(f"{model_dir} holds a LoRA adapter: folding it into the weights once, into {folded}")
    base = AutoModelForImageTextToText.from_pretrained(model_dir, dtype="auto")
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    partial = model_dir / (LORA_FOLDED + ".partial")
    merged.save_pretrained(partial)
    for f in model_dir.iterdir():  # tokenizer, processor and chat template files, as they are
        if f.is_file() and f.suffix not in (".safetensors", ".bin") and not (partial / f.name).exists():
            shutil.copy2(f, partial / f.name)
    os.replace(partial, folded)  # a crash midway leaves no half-written model behind
    return folded


def fetch_image(item: dict, factor: int) -> Image.Image:
    """The image the model sees for a parquet image cell ``{"bytes", "min_pixels", "max_pixels"}``."""
    image = to_rgb(Image.open(BytesIO(item["bytes"])))
    min_pixels = item.get("min_pixels") or _MIN_TOKENS * factor * factor
    max_pixels = item.get("max_pixels") or _MAX_TOKENS * factor * factor
    size = smart_resize(*image.size, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return image.resize(size)


def build_messages(prompt: list[dict], images: list[Image.Image]) -> list[dict]:
    """Chat messages with each ``<image>`` replaced by an image item, as verl builds them."""
    messages, used = copy.deepcopy(list(prompt)), 0
    for message in messages:
        if not isinstance(message["content"], str) or not images:
            continue
        content = []
        for segment in _PLACEHOLDER.split(message["content"]):
            if segment == "<image>":
                if used >= len(images):
                    raise ValueError("the prompt has more <image> placeholders than the row has images")
                content.append({"type": "image", "image": images[used]})
                used += 1
            elif segment:
                content.append({"type": "text", "text": segment})
        message["content"] = content
    if used != len(images):
        raise ValueError(f"the prompt uses {used} of the row's {len(images)} images")
    return messages


def strip_eos(text: str) -> str:
    """Drop end-of-sequence markers a decoder kept.

    >>> strip_eos("[1, 2, 3, 4]<|im_end|><|endoftext|>")
    '[1, 2, 3, 4]'
    """
    for eos in END_TOKENS:
        text = text.split(eos, 1)[0]
    return text


def patch_factor(processor) -> int:
    """Resize factor of a Qwen-VL processor: patch size times the spatial merge size."""
    ip = processor.image_processor
    return int(ip.patch_size) * int(getattr(ip, "merge_size", 2))


def _completed(out_path: Path) -> set[str]:
    """Indices already written; a cut-off last line is removed so appends stay valid."""
    if not out_path.exists():
        return set()
    data = out_path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(out_path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
    return set(read_responses(out_path)[0])


def finish_reason(ids, end_ids, max_new_tokens: int) -> str:
    """Why a transformers generation stopped: ``"length"`` when it holds no end token and
    used every new token allowed; else ``"stop"`` (padding after an end token is that end).

    >>> finish_reason([5, 6, 2, 0], {2}, 4), finish_reason([5, 6, 7, 8], {2}, 4)
    ('stop', 'length')
    """
    if any(t in end_ids for t in ids):
        return "stop"
    return "length" if len(ids) >= max_new_tokens else "stop"


def end_token_ids(model, tokenizer) -> set[int]:
    """The ids that end a generation: the model's ``eos_token_id`` (int or list) and END_TOKENS."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    ids |= {
        i for i in tokenizer.convert_tokens_to_ids(list(END_TOKENS)) if i is not None and i != tokenizer.unk_token_id
    }
    return ids


def align_tokens(pieces: list[str], logprobs: list[float], text: str) -> dict:
    """The ``logprobs`` / ``token_ends`` of the tokens that spell ``text`` (the response
    without its end markers), from each generated token's text and log-probability.

    >>> align_tokens(["[1", ", 2", "]", "<|im_end|>"], [-0.1, -0.25, -0.0, -0.5], "[1, 2]")
    {'logprobs': [-0.1, -0.25, -0.0], 'token_ends': [2, 5, 6]}
    >>> align_tokens(["\ufffd", "\ufffd"], [-1.0, -1.0], "\u4e2d")
    {'logprobs_error': 'the tokens do not spell the response'}
    """
    logps, ends, end = [], [], 0
    for piece, lp in zip(pieces, logprobs, strict=True):
        if end >= len(text):
            break
        if not isinstance(piece, str) or text[end : end + len(piece)] != piece:
            return {"logprobs_error": "the tokens do not spell the response"}
        end += len(piece)
        logps.append(round(float(lp), 4))
        ends.append(end)
    if end != len(text):
        return {"logprobs_error": "the tokens do not spell the response"}
    return {"logprobs": logps, "token_ends": ends}


class TransformersEngine:
    """Batched greedy ``generate`` with transformers (CPU or one GPU)."""

    name = "transformers"

    def __init__(
        self,
        model_dir,
        processor,
        max_new_tokens: int,
        dtype: str = "auto",
        device: str | None = None,
    ):
        import torch
        from transformers import AutoModelForImageTextToText

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype).to(self.device).eval()
        self.processor = processor
        self.processor.tokenizer.padding_side = "left"  # generation continues on the right
        self.max_new_tokens = max_new_tokens
        self.end_ids = end_token_ids(self.model, processor.tokenizer)

    def generate(self, prompts: list[str], images: list[list[Image.Image]], logprobs: bool = False) -> list[dict]:
        flat = [im for ims in images for im in ims] or None
        inputs = self.processor(text=prompts, images=flat, padding=True, return_tensors="pt").to(self.device)
        with self.torch.inference_mode():
            # repetition_penalty=1: plain greedy, as vLLM and verl's validation decode (Qwen2.5-VL's
            # generation_config would otherwise add 1.05).
            out = self.model.generate(
                **inputs,
                do_sample=False,
                repetition_penalty=1.0,
                max_new_tokens=self.max_new_tokens,
                return_dict_in_generate=True,
                output_scores=logprobs,
            )
            # normalize_logits: the scores are logits; log_softmax makes them log-probabilities
            # of the chosen tokens (transformers generation/utils.py compute_transition_scores).
            scores = (
                self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True).tolist()
                if logprobs
                else None
            )
        new = out.sequences[:, inputs["input_ids"].shape[1] :].tolist()
        texts = self.processor.batch_decode(new, skip_special_tokens=False)
        rows = []
        for n, (text, ids) in enumerate(zip(texts, new, strict=True)):
            row = {"response": strip_eos(text), "finish_reason": finish_reason(ids, self.end_ids, self.max_new_tokens)}
            if scores is not None:
                pieces = [self.processor.tokenizer.decode([i], skip_special_tokens=False) for i in ids]
                row.update(align_tokens(pieces, scores[n], row["response"]))
            rows.append(row)
        return rows


class VLLMEngine:
    """Greedy generation with vLLM (tensor parallel over ``tensor_parallel_size`` GPUs)."""

    name = "vllm"

    def __init__(
        self,
        model_dir,
        max_new_tokens: int,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        max_images: int = 1,
    ):
        from vllm import LLM, SamplingParams

        self.llm = LLM(
            model=str(model_dir),
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            limit_mm_per_prompt={"image": max_images},
            seed=0,
        )
        self.params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, skip_special_tokens=False)
        # logprobs=0: the sampled token's log-probability alone (vllm/sampling_params.py).
        self.with_logprobs = SamplingParams(
            temperature=0.0, max_tokens=max_new_tokens, skip_special_tokens=False, logprobs=0
        )

    def generate(self, prompts: list[str], images: list[list[Image.Image]], logprobs: bool = False) -> list[dict]:
        requests = [
            {"prompt": p, "multi_modal_data": {"image": ims}} if ims else {"prompt": p}
            for p, ims in zip(prompts, images, strict=True)
        ]
        outputs = self.llm.generate(requests, self.with_logprobs if logprobs else self.params, use_tqdm=False)
        # vllm/outputs.py CompletionOutput.finish_reason; vllm/v1/engine/__init__.py
        # FINISH_REASON_STRINGS: "length" = max_tokens consumed or max_model_len reached.
        return [self._row(o.outputs[0]) for o in outputs]

    @staticmethod
    def _row(completion) -> dict:
        row = {"response": strip_eos(completion.text), "finish_reason": completion.finish_reason}
        if completion.logprobs is not None:
            # One {token_id: Logprob(logprob, rank, decoded_token)} per generated token
            # (vllm/logprobs.py); with logprobs=0 it holds the sampled token.
            chosen = [pos[t] for t, pos in zip(completion.token_ids, completion.logprobs, strict=True)]
            row.update(align_tokens([c.decoded_token for c in chosen], [c.logprob for c in chosen], row["response"]))
        return row


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def _rows(data, todo: set[str], batch_rows: int):
    """``(prompt, images, extra_info)`` of the rows still to generate, in parquet order."""
    for batch in pq.ParquetFile(data).iter_batches(columns=["prompt", "images", "extra_info"], batch_size=batch_rows):
        for row in batch.to_pylist():
            if str(row["extra_info"]["index"]) in todo:
                yield row["prompt"], row["images"] or [], row["extra_info"]


def prepare(prompt, cells, extra_info, processor, factor: int) -> tuple[str, list[Image.Image]]:
    """The chat text and resized images of one row, as the model will see them."""
    images = [fetch_image(c, factor) for c in cells]
    expected = extra_info.get("input_size")
    if images and expected is not None and list(images[0].size) != list(expected):
        raise ValueError(
            f"row {extra_info.get('index')}: this model's processor resizes the image to {images[0].size}, "
            f"the split expects {tuple(expected)} (model_family {extra_info.get('model_family')!r}); "
            "prepare the split for this model family"
        )
    # As the recipes tell verl (data.apply_chat_template_kwargs): Qwen3.5's template thinks or not as the row asks.
    family_name = extra_info.get("model_family")
    switches = chat_template_kwargs(family_name, bool(extra_info.get("think"))) if family_name else {}
    messages = build_messages(prompt, images)
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **switches)
    return text, images


def generate(
    model,
    data,
    out,
    *,
    backend: str = "auto",
    batch_size: int = 64,
    max_new_tokens: int = 2048,
    tensor_parallel_size: int = 1,
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.9,
    max_images: int = 1,
    limit: int | None = None,
    dtype: str = "auto",
    device: str | None = None,
    logprobs: bool = False,
    engines: dict | None = None,
    log=print,
) -> dict:
    """Generate a response for every row of ``data`` not yet in ``out``; returns counts.

    ``backend``: ``"vllm"``, ``"transformers"`` or ``"auto"`` (vLLM when importable).
    ``limit`` caps the rows generated by this call (for smoke runs); ``max_images`` is the
    most images one row holds (vLLM reserves memory for them). ``engines``: a dict the
    caller keeps across calls, so several splits load the model once (vLLM does not promise
    a second engine in one process the GPU memory of the first). ``logprobs``: also write
    each token's log-probability and character offset (box confidences for ``score``).
    """
    from ..data.qwen_vl import load_processor
    from .dataset import read_split

    out = Path(out)
    check_output(out, [data], "responses")  # appending to the split (swapped arguments) would destroy it
    model_dir = fold_lora(resolve_model_dir(model), log)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _completed(out)
    samples = read_split(data)
    remaining = [s.index for s in samples if s.index not in done]
    todo = remaining[:limit]
    stats = {"rows": len(samples), "already_done": len(samples) - len(remaining), "generated": 0, "backend": None}
    if not todo:
        return stats
    if backend == "auto":
        backend = "vllm" if vllm_available() else "transformers"
    elif backend == "vllm" and not vllm_available():
        raise ValueError("vLLM is not installed (pip install 'perception-r1-verl[gpu]'); or use --backend transformers")
    processor = load_processor(model_dir)  # works without torchvision too
    factor = patch_factor(processor)
    engines = {} if engines is None else engines
    key = (backend, str(model_dir))
    engine = engines.get(key)
    if engine is None and backend == "vllm":
        engine = VLLMEngine(
            model_dir, max_new_tokens, tensor_parallel_size, max_model_len, gpu_memory_utilization, max_images
        )
    elif engine is None and backend == "transformers":
        engine = TransformersEngine(model_dir, processor, max_new_tokens, dtype, device)
    elif engine is None:
        raise ValueError(f"backend must be 'auto', 'vllm' or 'transformers', got {backend!r}")
    engines[key] = engine
    stats["backend"] = engine.name
    start = time.perf_counter()
    batch: list = []
    with open(out, "ab") as f:

        def flush():
            responses = engine.generate([b[1] for b in batch], [b[2] for b in batch], logprobs)
            lines = (orjson.dumps({"index": b[0], **r}) + b"\n" for b, r in zip(batch, responses, strict=True))
            f.write(b"".join(lines))
            f.flush()
            os.fsync(f.fileno())
            stats["generated"] += len(batch)
            log(f"{stats['generated']}/{len(todo)} rows, {time.perf_counter() - start:.0f}s")
            batch.clear()

        for prompt, cells, extra_info in _rows(data, set(todo), max(batch_size, 64)):
            batch.append((extra_info["index"], *prepare(prompt, cells, extra_info, processor, factor)))
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    return stats
