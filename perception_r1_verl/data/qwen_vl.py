"""Load the Qwen-VL processor and ``qwen_vl_utils`` where torchvision is missing.

verl turns each image through ``qwen_vl_utils.fetch_image`` and then the model's
processor. Both normally need torchvision (``qwen_vl_utils`` imports it at module level,
transformers' Qwen video processor requires it), which GPU installs have and CPU CI
does not. Images never touch torchvision on either path, so here:

- :func:`import_qwen_vl_utils` imports ``qwen_vl_utils`` for real, or with a stand-in
  ``torchvision`` present only during that import (video functions would fail; image
  ones are unaffected);
- :func:`load_processor` is ``AutoProcessor.from_pretrained``, or, when only the video
  processor is unavailable, the same Qwen2/2.5-VL processor without video support, built
  from the same folder with transformers' PIL image processor.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path


def import_qwen_vl_utils():
    """The ``qwen_vl_utils`` module, importable without torchvision (image functions only)."""
    try:
        import qwen_vl_utils

        return qwen_vl_utils
    except ModuleNotFoundError as e:
        if e.name != "torchvision":
            raise
    from transformers.utils import is_torchvision_available

    is_torchvision_available()  # cache transformers' answer (False) before the stand-in exists
    stub = types.ModuleType("torchvision")
    stub.__version__ = "0.0.0"
    stub.io = types.ModuleType("torchvision.io")
    stub.transforms = types.ModuleType("torchvision.transforms")
    stub.transforms.InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic", BILINEAR="bilinear")
    names = {"torchvision": stub, "torchvision.io": stub.io, "torchvision.transforms": stub.transforms}
    sys.modules.update(names)
    try:
        import qwen_vl_utils
    finally:
        for name in names:
            sys.modules.pop(name, None)
    return qwen_vl_utils


def load_processor(path: str | Path):
    """The processor verl would use for the model folder ``path`` (works without torchvision)."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path)
    except ImportError as e:
        if "orchvision" not in str(e):
            raise
        processor = _image_only_processor(Path(path))
    if not hasattr(processor, "image_processor"):
        raise ValueError(f"{path} holds no image processor (preprocessor_config.json with a processor_class)")
    return processor


def _image_only_processor(path: Path):
    from transformers import AutoTokenizer, ProcessorMixin
    from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class ImageOnlyQwenVLProcessor(Qwen2_5_VLProcessor):
        """Qwen2.5-VL's processor minus the video processor (which needs torchvision)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    tokenizer = AutoTokenizer.from_pretrained(path)
    return ImageOnlyQwenVLProcessor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(path),
        tokenizer=tokenizer,
        chat_template=_chat_template(path) or tokenizer.chat_template,
    )


def _chat_template(path: Path) -> str | None:
    """The processor's chat template as model folders ship it (json or jinja), if any."""
    if (path / "chat_template.jinja").exists():
        return (path / "chat_template.jinja").read_text()
    if (path / "chat_template.json").exists():
        return json.loads((path / "chat_template.json").read_text())["chat_template"]
    return None
