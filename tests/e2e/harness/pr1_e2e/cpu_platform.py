"""A CPU platform for verl 0.9.1, registered as ``cpu`` (select it with ``VERL_PLATFORM=cpu``).

Test-only (scripts/e2e.sh): verl ships CUDA/NPU/ROCm platforms and takes others through
``verl.plugin.platform.PlatformRegistry``. Loaded by verl's ``verl.plugins`` entry points on
``import verl``, so every Ray worker gets it too. It does nothing unless ``VERL_PLATFORM=cpu``.
Pinned for verl 0.9.1; each patch names the line it answers.
"""

from __future__ import annotations

import os
import types
from contextlib import nullcontext

import torch
from verl.plugin.platform import PlatformRegistry
from verl.plugin.platform.platform_base import PlatformBase

ENABLED = os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu"


def _noop(*args, **kwargs):
    return None


def _device_module() -> types.ModuleType:
    """``torch.cpu`` plus the ``torch.cuda`` calls verl makes through ``get_torch_device()``."""
    module = types.ModuleType("pr1_e2e_cpu_device")
    module.__dict__.update({k: getattr(torch.cpu, k) for k in dir(torch.cpu) if not k.startswith("_")})
    module.__dict__.update(
        set_device=_noop,
        empty_cache=_noop,
        ipc_collect=_noop,
        set_per_process_memory_fraction=_noop,
        reset_peak_memory_stats=_noop,
        manual_seed=torch.manual_seed,
        manual_seed_all=torch.manual_seed,
        get_rng_state=torch.get_rng_state,
        set_rng_state=torch.set_rng_state,
        memory_allocated=lambda *a, **k: 0,
        memory_reserved=lambda *a, **k: 0,
        max_memory_allocated=lambda *a, **k: 0,
        max_memory_reserved=lambda *a, **k: 0,
        mem_get_info=lambda *a, **k: (8 << 30, 16 << 30),
        get_device_name=lambda *a, **k: "cpu",
        current_device=lambda: "cpu",
        device_count=lambda: 1,
        is_available=lambda: True,
    )
    return module


@PlatformRegistry.register(platform="cpu")
class PlatformCPU(PlatformBase):
    """One "device", the CPU, behind Ray's fake ``GPU`` resource (``ray_init.num_gpus=1``)."""

    _module = _device_module()

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return self._module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check=False) -> bool:
        return False  # only ever chosen explicitly, through VERL_PLATFORM=cpu

    def current_device(self):
        # verl moves tensors with `.to(get_device_id())`: an int would mean cuda:<int>.
        return torch.device("cpu")

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index) -> None:
        return None

    def synchronize(self, device_index=None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0):
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"  # what Ray sets for its (fake) GPU resource

    def nvtx_range(self, msg: str):
        return nullcontext()

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        # single_controller/ray/base.py `_check_resource_available` counts Ray "GPU"/"NPU" only.
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        # No CUDA IPC handles: verl's rollout weight sync then goes through shared memory.
        return False

    def cudart(self):
        return None


def _patch_verl() -> None:
    import torch.distributed.fsdp as fsdp
    import verl.utils.distributed as distributed

    # utils/distributed.py `initialize_global_process_group_ray`: the default backend
    # f"cpu:gloo,{device}:{backend}" reads "cpu:gloo,cpu:gloo" here, which torch rejects.
    init = distributed.initialize_global_process_group_ray

    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        return init(timeout_second=timeout_second, backend=backend or "gloo")

    distributed.initialize_global_process_group_ray = initialize_global_process_group_ray

    # workers/engine/fsdp/transformer_impl.py `_build_fsdp_module`: the reference (forward
    # only) gets CPUOffloadPolicy(pin_memory=True); pinning needs an accelerator.
    class CPUOffloadPolicy(fsdp.CPUOffloadPolicy):
        def __init__(self, pin_memory: bool = False):
            super().__init__(pin_memory=False)

    fsdp.CPUOffloadPolicy = CPUOffloadPolicy

    # workers/engine/fsdp/transformer_impl.py registers the FSDP engines for devices
    # ["cuda", "npu"]; EngineRegistry.get_engine_cls takes VERL_ENGINE_DEVICE as the key.
    os.environ.setdefault("VERL_ENGINE_DEVICE", "cuda")


if ENABLED:
    _patch_verl()
