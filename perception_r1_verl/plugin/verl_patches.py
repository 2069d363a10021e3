"""Narrow fixes of verl defects that stop a Perception-R1 run, installed by the plugin.

The ``verl.plugins`` entry point (``perception_r1_verl.plugin.verl_plugin``, imported by ``import
verl`` in every process) calls :func:`install`. Each fix is applied when verl first imports
its module, and only where the installed verl has the defect, recognised from the
function's source. Where the source is not what the fix expects (another verl), it logs one
WARNING and leaves verl as it is; a verl that has fixed the defect is left alone quietly.
``PERCEPTION_VERL_PATCHES=0`` installs nothing.

**The image-less micro-batch** (verl 0.9.1 ``verl/models/transformers/qwen2_vl.py``
``_get_input_embeds``, the model forward of Qwen2-VL and Qwen2.5-VL). A micro-batch without
any image still runs the visual tower on a dummy 4x4-patch image and adds
``0.0 * image_embeds.mean()``: every FSDP rank then all-gathers (and reduce-scatters the
gradients of) the same visual parameters, whether its micro-batch has images or not. Under
transformers 5 the tower returns a ``BaseModelOutputWithPooling``, so ``.mean()`` raises
``AttributeError`` and the run dies at the first such micro-batch. verl's own padding
samples (text-only, added whenever a step's response count does not divide over the GPUs,
as with the curriculum's per-row ``__rollout_n__``) make one whenever a micro-batch holds
only padding. The fix hands that branch a view of the model whose ``visual`` returns the
embeddings, unpacked by verl's own ``unpack_visual_output`` (as its image branch and
Qwen3-VL's copy of the dummy branch already do); everything else is verl's code.

**Equal-length 3D position ids** (verl 0.9.1 ``verl/utils/tensordict_utils.py``
``maybe_fix_3d_position_ids``). Each Qwen-VL sample's position ids are ``(4, L)``; a batch
of them is a jagged nested tensor. When the lengths differ, torch makes ``L`` the ragged
dim, pickling loses ``_ragged_idx`` and verl sets it back to 2. When every row has the same
``L`` (images of one size, every response cut at the length limit), torch takes the ``4``
as the ragged dim; verl still sets 2, and splitting the batch into mini-batches dies
("split_with_sizes expects split_sizes to sum exactly to L"). The fix rebuilds such a
batch with ``L`` ragged, and otherwise does what verl does.

**The training-data iterator outliving the run** (verl 0.9.1
``verl/trainer/ppo/v1/trainer_base.py``: ``_fetch_one_gen_batch`` keeps
``self.train_dataloader_it``, and ``fit`` returns without releasing it). Its
``data.dataloader_num_workers`` worker processes stay alive after the last step; when Ray
ends the TaskRunner it kills them first, and the TaskRunner's torch SIGCHLD handler reports
"DataLoader worker (pid ...) is killed by signal" at the end of a run that succeeded. The
fix shuts the iterator's workers down when ``fit`` returns or raises.

**The file logger truncating a resumed run's metrics** (verl 0.9.1 ``verl/utils/tracking.py``
``FileLogger.__init__`` opens ``metrics.jsonl`` with ``"wb"``). A run relaunched with
``trainer.resume_mode=auto`` logs to the same file (``VERL_FILE_LOGGER_PATH``, or one per
project and experiment) and erases the steps before the interruption: its curve starts at
the resumed step. The fix opens the file for appending; readers take a step's last record
(``perception-r1-eval curves``), so steps logged twice around an interruption read as
the resumed run wrote them.
"""

from __future__ import annotations

import builtins
import functools
import logging
import sys
from collections.abc import Callable

from perception_r1_verl.plugin.import_hooks import install_patches, patch_applier

logger = logging.getLogger(__name__)

ENV_VAR = "PERCEPTION_VERL_PATCHES"
_MARK = "_perception_verl_patch"
# verl 0.9.1's no-image branch of _get_input_embeds starts with this test.
NO_IMAGE_BRANCH = "if pixel_values is None and pixel_values_videos is None"


def dummy_visual_unpacked(source: str) -> bool | None:
    """Whether the no-image branch of a ``_get_input_embeds`` source unpacks the visual
    tower's output before ``.mean()``; ``None`` when the source has no such branch.

    >>> branch = NO_IMAGE_BRANCH + ":\\n    image_embeds = model.visual(pixel_values, grid_thw=g)\\n"
    >>> dummy_visual_unpacked(branch + "    x = x + 0.0 * image_embeds.mean()")
    False
    >>> dummy_visual_unpacked(branch.replace("model.visual(", "unpack_visual_output(model.visual(") + ")")
    True
    >>> dummy_visual_unpacked("def f(model):\\n    return model.visual(x)") is None
    True
    """
    _, found, branch = source.partition(NO_IMAGE_BRANCH)
    if not found or "model.visual(" not in branch:
        return None
    return "unpack_visual_output(" in branch


class _UnpackingVisual:
    """``model`` as verl's no-image branch sees it, with ``visual(...)`` returning the
    image embeddings: the real tower runs (parameters, FSDP hooks, autograd unchanged)."""

    def __init__(self, model, unpack: Callable):
        self._model, self._unpack = model, unpack

    def __getattr__(self, name):
        return getattr(self._model, name)

    def visual(self, *args, **kwargs):
        embeds, _ = self._unpack(self._model.visual(*args, **kwargs))
        return embeds


def unpacking_dummy_visual(get_input_embeds: Callable, unpack: Callable) -> Callable:
    """``get_input_embeds`` whose no-image call sees :class:`_UnpackingVisual`; calls with
    images go to it unchanged."""

    @functools.wraps(get_input_embeds)
    def wrapper(model, input_ids, attention_mask=None, pixel_values=None, pixel_values_videos=None, *args, **kwargs):
        if pixel_values is None and pixel_values_videos is None:
            model = _UnpackingVisual(model, unpack)
        return get_input_embeds(model, input_ids, attention_mask, pixel_values, pixel_values_videos, *args, **kwargs)

    setattr(wrapper, _MARK, True)
    return wrapper


def patch_qwen2_vl(module) -> str:
    """Fix ``module._get_input_embeds`` (``verl.models.transformers.qwen2_vl``) if it has the
    defect; returns what was done. Raises ``RuntimeError`` where its source is unexpected."""
    import inspect

    original = module._get_input_embeds
    if getattr(original, _MARK, False):
        return "already patched"
    unpacked = dummy_visual_unpacked(inspect.getsource(original))
    if unpacked is None:
        raise RuntimeError(f"{module.__name__}._get_input_embeds has no dummy-visual branch ({NO_IMAGE_BRANCH!r})")
    if unpacked:
        return "not needed: verl unpacks the visual output itself"
    from verl.utils.transformers_compat import unpack_visual_output

    # qwen2_vl_base_forward / qwen2_vl_forward look the function up in the module at each call.
    module._get_input_embeds = unpacking_dummy_visual(original, unpack_visual_output)
    return "patched"


def fix_3d_position_ids(data) -> None:
    """verl's ``maybe_fix_3d_position_ids``, also right for a batch of equal-length rows.

    >>> import torch
    >>> from tensordict import TensorDict
    >>> rows = [torch.arange(12).view(4, 3), torch.arange(12).view(4, 3) + 100]
    >>> td = TensorDict({"position_ids": torch.nested.as_nested_tensor(rows, layout=torch.jagged)}, batch_size=[2])
    >>> fix_3d_position_ids(td)
    >>> [tuple(t.shape) for t in td["position_ids"].unbind()], bool((td["position_ids"].unbind()[1] == rows[1]).all())
    ([(4, 3), (4, 3)], True)
    """
    if "position_ids" not in data.keys():
        return
    position_ids = data["position_ids"]
    if not (position_ids.is_nested and position_ids.dim() == 3):
        return
    offsets, values = position_ids.offsets(), position_ids.values()
    if position_ids._ragged_idx == 1 and values.shape[0] == int(offsets[-1]):
        # The 4 rows of each sample were taken as the ragged dim: cut them back into samples.
        from verl.utils.tensordict_utils import nested_tensor_from_tensor_list

        rows = [values[int(a) : int(b)] for a, b in zip(offsets[:-1], offsets[1:])]
        data["position_ids"] = nested_tensor_from_tensor_list(rows, ragged_idx=2)
    else:
        position_ids._ragged_idx = 2


# verl 0.9.1's maybe_fix_3d_position_ids sets the ragged dim to 2 unconditionally.
_RAGGED_TO_2 = 'data["position_ids"]._ragged_idx = 2'
# Modules that bind maybe_fix_3d_position_ids by name (only rebound when imported first).
_POSITION_IDS_BINDERS = (
    "verl.workers.engine_workers",
    "verl.workers.engine.base",
    "verl.workers.engine_workers_tinker",
)


def patch_tensordict_utils(module) -> str:
    """Replace ``module.maybe_fix_3d_position_ids`` (``verl.utils.tensordict_utils``) if it
    has the defect; returns what was done. Raises ``RuntimeError`` where its source is unexpected."""
    import inspect

    original = module.maybe_fix_3d_position_ids
    if original is fix_3d_position_ids:
        return "already patched"
    source = inspect.getsource(original)
    if "_ragged_idx" not in source:
        raise RuntimeError(f"{module.__name__}.maybe_fix_3d_position_ids does not set _ragged_idx")
    if _RAGGED_TO_2 not in source or "offsets" in source:
        return "not needed: verl handles equal-length rows itself"
    module.maybe_fix_3d_position_ids = fix_3d_position_ids
    for name in _POSITION_IDS_BINDERS:
        binder = sys.modules.get(name)
        if getattr(binder, "maybe_fix_3d_position_ids", None) is original:
            binder.maybe_fix_3d_position_ids = fix_3d_position_ids
    return "patched"


def releasing_train_iterator(fit: Callable) -> Callable:
    """``fit`` that shuts down the workers of ``self.train_dataloader_it`` when it ends."""

    @functools.wraps(fit)
    def wrapper(self, *args, **kwargs):
        try:
            return fit(self, *args, **kwargs)
        finally:
            iterator, self.train_dataloader_it = getattr(self, "train_dataloader_it", None), None
            shutdown = getattr(iterator, "_shutdown_workers", None)  # a multi-process iterator
            if shutdown is not None:
                shutdown()

    setattr(wrapper, _MARK, True)
    return wrapper


def patch_trainer_base(module) -> str:
    """Make ``module.PPOTrainer.fit`` (``verl.trainer.ppo.v1.trainer_base``) release the
    training-data iterator; returns what was done. Raises ``RuntimeError`` where its source
    is unexpected."""
    import inspect

    trainer = module.PPOTrainer
    if getattr(trainer.fit, _MARK, False):
        return "already patched"
    if "self.train_dataloader_it = iter(" not in inspect.getsource(trainer._fetch_one_gen_batch):
        raise RuntimeError(f"{module.__name__}.PPOTrainer keeps no train_dataloader_it")
    if "train_dataloader_it" in inspect.getsource(trainer.fit):
        return "not needed: verl's fit handles the iterator itself"
    trainer.fit = releasing_train_iterator(trainer.fit)  # subclasses inherit fit (verl 0.9.1)
    return "patched"


# verl 0.9.1's FileLogger.__init__ opens its file with this call.
_TRUNCATING_OPEN = 'open(self.filepath, "wb", buffering=0)'


def appending_open(file, mode="r", *args, **kwargs):
    """``open`` with ``"wb"`` turned into ``"ab"``: the name verl's ``FileLogger`` finds first.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "m.jsonl")
    >>> for line in (b"1\\n", b"2\\n"):
    ...     with appending_open(path, "wb") as f:
    ...         _ = f.write(line)
    >>> open(path, "rb").read()
    b'1\\n2\\n'
    """
    return builtins.open(file, "ab" if mode == "wb" else mode, *args, **kwargs)


def patch_tracking(module) -> str:
    """Make ``module.FileLogger`` (``verl.utils.tracking``) append to its file; returns what was
    done. Raises ``RuntimeError`` where its source is unexpected."""
    import inspect

    if getattr(module, "open", None) is appending_open:
        return "already patched"
    source = inspect.getsource(module.FileLogger.__init__)
    if "self.fp = open(" not in source:
        raise RuntimeError(f"{module.__name__}.FileLogger opens no file")
    if _TRUNCATING_OPEN not in source:
        return "not needed: verl's FileLogger does not truncate"
    # The module's one "wb" open is FileLogger's (the other writes validation text with "w"); a
    # module global shadows the builtin for that code alone.
    module.open = appending_open
    return "patched"


PATCHES: dict[str, Callable] = {
    "verl.models.transformers.qwen2_vl": patch_qwen2_vl,
    "verl.utils.tensordict_utils": patch_tensordict_utils,
    "verl.trainer.ppo.v1.trainer_base": patch_trainer_base,
    "verl.utils.tracking": patch_tracking,
}


_apply = patch_applier(
    PATCHES,
    "perception-r1-verl: cannot fix %s (verl's code differs from 0.9.1?); left as verl ships it",
    logger,
)


def install() -> bool:
    """Apply the fixes now (modules already imported) or when verl imports them; ``False``
    when ``PERCEPTION_VERL_PATCHES=0``."""
    return install_patches(PATCHES, _apply, ENV_VAR)
