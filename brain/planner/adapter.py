"""The planner adapter shipped in policies/artifacts/planner: its format, merging it into
the base model at first use, and reading which prompt format a model folder was tuned
for."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

TUNE_FORMAT = "sitian-planner-v2"


MARKER = "sitian.json"


ARTIFACT_DIR = Path(__file__).resolve().parents[2] / "policies" / "artifacts" / "planner"


def save_adapter(tensors: dict, meta: dict, folder: Path = ARTIFACT_DIR) -> None:
    from safetensors.torch import save_file  # lazy: heavy optional library

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half() for k, v in tensors.items()}, str(folder / "adapter.safetensors"))
    (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def merge_adapter(base: Path, dest: Path, folder: Path = ARTIFACT_DIR) -> Path:
    """``base`` + the shipped adapter -> a model folder vLLM loads (a temporary folder,
    then a rename), with the marker the planner reads."""
    import torch  # lazy: heavy optional library
    from safetensors.torch import load_file  # lazy: heavy optional library
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: heavy optional library

    meta = json.loads((folder / "meta.json").read_text())
    if meta.get("format") != TUNE_FORMAT:
        raise ValueError(f"planner adapter {folder} is for {meta.get('format')!r}, "
                         f"not {TUNE_FORMAT!r}")
    tensors = load_file(str(folder / "adapter.safetensors"))
    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    weights = dict(model.named_parameters())
    with torch.no_grad():
        for key in sorted(k[:-2] for k in tensors if k.endswith(".A")):
            if key not in weights:
                raise ValueError(f"planner adapter: the model has no weight {key}")
            delta = tensors[key + ".B"].float() @ tensors[key + ".A"].float()
            weights[key] += meta["scale"] * delta
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps({**meta, "base": str(base)}, indent=1))
    try:
        tmp.rename(dest)
    except OSError:  # another process finished first: keep its folder
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def adapter_current(model_dir: Path, folder: Path = ARTIFACT_DIR) -> bool:
    """Whether a merged folder holds the adapter shipped now."""
    try:
        have = json.loads((model_dir / MARKER).read_text())
        ship = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return all(have.get(k) == v for k, v in ship.items())


def tuned_format(model_dir: str | Path) -> str | None:
    """The prompt format a model folder was tuned for, or None."""
    try:
        return json.loads((Path(model_dir) / MARKER).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None
