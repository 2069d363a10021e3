"""The plugin's fixes of verl defects (``perception_r1_verl.plugin.verl_patches``), on tiny random
Qwen2-VL / Qwen2.5-VL models built from configs (no hub, no Ray, a few seconds)."""

from __future__ import annotations

import inspect
import json
import logging
import subprocess
import sys
import types

import pytest
import torch

from perception_r1_verl.plugin import import_hooks, verl_patches

IMAGE_TOKEN = 250
# A 1x4x4 patch grid: 16 patches, 4 image tokens after the 2x2 merge.
GRID = torch.tensor([[1, 4, 4]])
TEXT = dict(hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
            vocab_size=256, bos_token_id=0, eos_token_id=1, rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]})  # fmt: skip
VISION = {
    "qwen2_vl": dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2),
    "qwen2_5_vl": dict(
        depth=2, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=64, fullatt_block_indexes=[1]
    ),  # fmt: skip  (one windowed block, one full)
}


def tiny_model(family: str):
    """The inner ``Qwen2VLModel`` / ``Qwen2_5_VLModel``: what verl's forward hands ``_get_input_embeds``."""
    import transformers

    config_cls, model_cls = {
        "qwen2_vl": (transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration),
        "qwen2_5_vl": (transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration),
    }[family]
    config = config_cls(text_config=TEXT, vision_config=VISION[family], vocab_size=256,
                        image_token_id=IMAGE_TOKEN, video_token_id=IMAGE_TOKEN + 1)  # fmt: skip
    torch.manual_seed(0)
    return model_cls(config).model


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def model(request):
    return tiny_model(request.param)


@pytest.fixture(scope="module")
def qwen2_vl():
    """verl's module, imported as its workers import it (``import verl`` loads the plugin)."""
    from verl.models.transformers import qwen2_vl

    return qwen2_vl


def text_ids() -> torch.Tensor:
    return torch.arange(2, 18).reshape(2, 8)  # two text-only rows, like verl's padding samples


def test_installed_verl_has_the_defect_and_it_is_patched(qwen2_vl):
    patched = qwen2_vl._get_input_embeds
    assert getattr(patched, verl_patches._MARK, False)
    assert verl_patches.dummy_visual_unpacked(inspect.getsource(patched.__wrapped__)) is False


def test_unpatched_verl_fails_on_a_micro_batch_without_images(model, qwen2_vl):
    with pytest.raises(AttributeError, match="BaseModelOutputWithPooling.*mean"):
        qwen2_vl._get_input_embeds.__wrapped__(model, text_ids())


def test_a_micro_batch_without_images_runs_and_still_reaches_every_visual_parameter(model, qwen2_vl):
    model.zero_grad()
    mask = torch.ones(2, 8, dtype=torch.long)
    embeds, out_mask = qwen2_vl._get_input_embeds(model, text_ids(), mask)
    assert out_mask is mask
    # 0.0 x the dummy image: the text embeddings are unchanged.
    assert torch.equal(embeds, model.get_input_embeddings()(text_ids()))
    embeds.square().sum().backward()
    visual = list(model.visual.named_parameters())
    assert visual
    # The tower is in the graph (so every FSDP rank gathers and reduces it), with zero gradient.
    for name, param in visual:
        assert param.grad is not None, name
        assert torch.count_nonzero(param.grad) == 0, name
    assert torch.count_nonzero(model.get_input_embeddings().weight.grad) > 0


def test_a_micro_batch_with_an_image_is_verls_own(model, qwen2_vl):
    patch_dim = 3 * 2 * 14 * 14  # channels x temporal patch x patch^2
    pixels = torch.randn(16, patch_dim)
    ids = torch.tensor([[2, 3, IMAGE_TOKEN, IMAGE_TOKEN, IMAGE_TOKEN, IMAGE_TOKEN, 4, 5]])
    with torch.no_grad():
        got = qwen2_vl._get_input_embeds(model, ids, None, pixels, None, GRID, None)
        expected = qwen2_vl._get_input_embeds.__wrapped__(model, ids, None, pixels, None, GRID, None)
    assert torch.equal(got[0], expected[0])
    assert not torch.equal(got[0], model.get_input_embeddings()(ids))  # the image went in


def _fake_verl_module(function) -> types.ModuleType:
    module = types.ModuleType("verl.models.transformers.qwen2_vl")
    module._get_input_embeds = function
    return module


def _fixed_upstream(model, input_ids, attention_mask=None, pixel_values=None, pixel_values_videos=None):
    if pixel_values is None and pixel_values_videos is None:
        embeds, _ = unpack_visual_output(model.visual(pixel_values))  # noqa: F821  (source only)
    return embeds, attention_mask


def _unknown(model, input_ids, attention_mask=None):
    return model(input_ids), attention_mask


def test_a_verl_that_fixed_it_is_left_alone_quietly(caplog):
    module = _fake_verl_module(_fixed_upstream)
    with caplog.at_level(logging.DEBUG, logger=verl_patches.__name__):
        verl_patches._apply(module)
    assert module._get_input_embeds is _fixed_upstream
    assert "not needed" in caplog.text and "WARNING" not in caplog.text


def test_an_unexpected_verl_gets_one_warning_and_is_left_alone(caplog):
    module = _fake_verl_module(_unknown)
    with caplog.at_level(logging.WARNING, logger=verl_patches.__name__):
        verl_patches._apply(module)
    assert module._get_input_embeds is _unknown
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "cannot fix verl.models.transformers.qwen2_vl" in record.message


def test_patching_twice_wraps_once(qwen2_vl):
    patched = qwen2_vl._get_input_embeds
    verl_patches.install()
    verl_patches.patch_qwen2_vl(qwen2_vl)
    assert qwen2_vl._get_input_embeds is patched


def test_the_opt_out_installs_nothing(monkeypatch):
    monkeypatch.setenv(verl_patches.ENV_VAR, "0")
    assert verl_patches.install() is False


def test_import_verl_installs_the_fix_before_verls_module_is_used():
    # A fresh process, as a Ray worker: the plugin comes in with `import verl`, the fix when
    # verl's monkey patching imports the module.
    code = (
        "import sys, verl\n"
        "assert 'verl.models.transformers.qwen2_vl' not in sys.modules\n"
        "from verl.models.transformers import qwen2_vl\n"
        "print(getattr(qwen2_vl._get_input_embeds, '_perception_verl_patch', False))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "True"


def equal_length_position_ids():
    """A batch of two Qwen-VL samples of one length L=3: (4, L) position ids each, packed as
    verl's TransferQueue packs them (torch then takes the 4 as the ragged dim)."""
    from tensordict import TensorDict

    rows = [torch.arange(12).view(4, 3), torch.arange(12).view(4, 3) + 100]
    nested = torch.nested.as_nested_tensor(rows, layout=torch.jagged)
    return rows, TensorDict({"position_ids": nested}, batch_size=[2])


def test_verls_position_ids_fix_breaks_a_batch_of_equal_lengths_and_the_plugins_does_not():
    from verl.utils import tensordict_utils

    original = inspect.unwrap(tensordict_utils.maybe_fix_3d_position_ids)
    assert original is verl_patches.fix_3d_position_ids  # import verl installed the fix
    rows, td = equal_length_position_ids()
    # verl 0.9.1's function is this one line (its module's source, as it ships):
    assert verl_patches._RAGGED_TO_2 in inspect.getsource(tensordict_utils)
    td["position_ids"]._ragged_idx = 2
    with pytest.raises(RuntimeError):
        td["position_ids"].unbind()
    rows, td = equal_length_position_ids()
    verl_patches.fix_3d_position_ids(td)
    assert [tuple(t.shape) for t in td["position_ids"].unbind()] == [(4, 3), (4, 3)]
    assert all(bool((a == b).all()) for a, b in zip(td["position_ids"].unbind(), rows, strict=True))
    # Rows of different lengths: L is already ragged; the fix only restores the index, as verl's.
    from tensordict import TensorDict

    mixed = [torch.arange(12).view(4, 3), torch.arange(16).view(4, 4)]
    td = TensorDict({"position_ids": torch.nested.as_nested_tensor(mixed, layout=torch.jagged)}, batch_size=[2])
    verl_patches.fix_3d_position_ids(td)
    assert [tuple(t.shape) for t in td["position_ids"].unbind()] == [(4, 3), (4, 4)]


def test_import_verl_fixes_position_ids_where_verls_workers_bind_it():
    code = (
        "import verl\n"
        "from verl.workers import engine_workers\n"
        "from verl.workers.engine import base\n"
        "from perception_r1_verl.plugin.verl_patches import fix_3d_position_ids as fix\n"
        "print(engine_workers.maybe_fix_3d_position_ids is fix, base.maybe_fix_3d_position_ids is fix)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "True True"


def test_on_import_patches_a_module_when_it_executes_and_at_once_when_already_imported(tmp_path, monkeypatch):
    (tmp_path / "pr1_patch_target.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []

    def patch(module):
        seen.append(module.VALUE)
        module.VALUE = 2

    import_hooks.on_import("pr1_patch_target", patch)
    assert seen == []  # not imported yet
    import pr1_patch_target

    assert seen == [1] and pr1_patch_target.VALUE == 2  # patched before the importer saw it
    import_hooks.on_import("pr1_patch_target", patch)  # already imported: at once, registered once
    assert seen == [1, 2] and import_hooks._finder.patches["pr1_patch_target"] == [patch]
    monkeypatch.delitem(sys.modules, "pr1_patch_target")
    del import_hooks._finder.patches["pr1_patch_target"]


class _Prompts(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"raw_prompt": f"prompt {i}", "input_ids": torch.tensor([i])}


def _collate(rows):
    return {"raw_prompt": [r["raw_prompt"] for r in rows], "input_ids": torch.stack([r["input_ids"] for r in rows])}


def test_fit_releases_the_training_data_workers_verls_fetch_keeps_alive():
    from torchdata.stateful_dataloader import StatefulDataLoader
    from verl.trainer.ppo.v1 import trainer_base

    trainer_cls = trainer_base.PPOTrainer
    assert getattr(trainer_cls.fit, "_perception_verl_patch", False)  # import verl installed the fix

    iterators = []

    def fit(self):  # what verl's fit does with the data: batches through verl's own fetch
        trainer_cls._fetch_one_gen_batch(self)
        trainer_cls._fetch_one_gen_batch(self)
        iterators.append(self.train_dataloader_it)

    trainer = types.SimpleNamespace(
        train_dataloader=StatefulDataLoader(_Prompts(), batch_size=2, num_workers=2, collate_fn=_collate),
        train_dataloader_it=None,
    )
    fit(trainer)  # verl's own behaviour: the iterator and its worker processes outlive fit
    kept = trainer.train_dataloader_it
    assert kept is iterators[0] and len(kept._workers) == 2 and all(w.is_alive() for w in kept._workers)
    kept._shutdown_workers()

    trainer.train_dataloader_it = None
    verl_patches.releasing_train_iterator(fit)(trainer)
    assert trainer.train_dataloader_it is None
    assert not any(w.is_alive() for w in iterators[1]._workers)


def test_fit_releases_the_workers_when_it_raises():
    closed = []
    iterator = types.SimpleNamespace(_shutdown_workers=lambda: closed.append(True))

    def fit(self):
        self.train_dataloader_it = iterator
        raise RuntimeError("step failed")

    trainer = types.SimpleNamespace(train_dataloader_it=None)
    with pytest.raises(RuntimeError, match="step failed"):
        verl_patches.releasing_train_iterator(fit)(trainer)
    assert closed == [True] and trainer.train_dataloader_it is None


class _TrainerThatReleases:
    def _fetch_one_gen_batch(self):
        self.train_dataloader_it = iter(self.train_dataloader)

    def fit(self):
        self._fetch_one_gen_batch()
        self.train_dataloader_it = None


def test_a_verl_whose_fit_releases_the_iterator_is_left_alone():
    module = types.ModuleType("verl.trainer.ppo.v1.trainer_base")
    module.PPOTrainer = _TrainerThatReleases
    fit = _TrainerThatReleases.fit
    assert verl_patches.patch_trainer_base(module).startswith("not needed")
    assert _TrainerThatReleases.fit is fit


def _two_launches(tracking, path) -> list[int]:
    """Steps in ``path`` after a run logs step 1 and a relaunch (a resumed run) logs step 2."""
    for step in (1, 2):
        logger = tracking.FileLogger("project", "experiment")
        logger.log({"critic/score/mean": float(step)}, step=step)
        logger.finish()
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_a_resumed_run_appends_to_the_metrics_file_verl_would_truncate(tmp_path, monkeypatch):
    import verl  # noqa: F401  (installs the plugin's fixes)
    from verl.utils import tracking

    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(tmp_path / "metrics.jsonl"))
    assert tracking.open is verl_patches.appending_open
    assert _two_launches(tracking, tmp_path / "metrics.jsonl") == [1, 2]
    monkeypatch.delattr(tracking, "open")  # verl as it ships: the relaunch erases step 1
    assert _two_launches(tracking, tmp_path / "metrics.jsonl") == [2]


class _AppendingFileLogger:
    """A FileLogger as a verl that fixed the defect would write it."""

    def __init__(self, project_name, experiment_name):
        self.filepath = "metrics.jsonl"
        self.fp = open(self.filepath, "ab", buffering=0)


def test_a_file_logger_that_appends_is_left_alone():
    module = types.SimpleNamespace(__name__="verl.utils.tracking", FileLogger=_AppendingFileLogger)
    assert verl_patches.patch_tracking(module).startswith("not needed")
    assert not hasattr(module, "open")
