"""vLLM (CUDA) against Hugging Face transformers ``generate`` on the planner's model and
prompts (issue 6): generated tokens per second at batch 1 and 16, greedy, 64 new tokens
per prompt (end of sequence ignored, so both produce the same number of tokens), and
the ratio at each batch size. The baseline is transformers in the same run, on the same
GPU, in the same dtype. Without a CUDA GPU it prints one line saying it was skipped.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

NEW_TOKENS = 64


def main() -> int:
    from brain.planner.engine import has_cuda, resolve_model
    from brain.planner.model import offline

    if not has_cuda():
        print(json.dumps({"bench": "planner_gpu",
                          "skipped": "no CUDA GPU on this machine (CI has none)"}))
        return 0
    offline()
    import torch
    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from brain.planner.prompts import tuned_fill_messages

    path = resolve_model(None)
    items = yaml.safe_load((Path(__file__).parent / "planner_eval.yaml").read_text())
    convs = [tuned_fill_messages(it["request"], it["tool"] if it["tool"] != "none"
                                 else "get_status", None) for it in items]
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.padding_side = "left"
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
             for c in convs]
    out = {"bench": "planner_gpu", "model": str(path), "new_tokens": NEW_TOKENS,
           "gpu": torch.cuda.get_device_name(0)}

    hf = {"model": AutoModelForCausalLM.from_pretrained(str(path),
                                                  dtype=torch.bfloat16).cuda().eval()}
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token

    def hf_rate(batch: int) -> float:
        n = 0
        t0 = time.perf_counter()
        for b0 in range(0, 2 * batch if batch > 1 else 8, batch):
            chunk = [texts[(b0 + k) % len(texts)] for k in range(batch)]
            enc = tok(chunk, return_tensors="pt", padding=True,
                      add_special_tokens=False).to("cuda")
            with torch.no_grad():
                hf["model"].generate(**enc, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                            do_sample=False, pad_token_id=tok.pad_token_id)
            n += batch * NEW_TOKENS
        torch.cuda.synchronize()
        return n / (time.perf_counter() - t0)

    hf_rate(1)  # warm-up
    hf_tps = {b: hf_rate(b) for b in (1, 16)}
    hf.clear()
    torch.cuda.empty_cache()

    from vllm import LLM, SamplingParams

    llm = LLM(model=str(path), dtype="bfloat16", gpu_memory_utilization=0.3, seed=0)
    sp = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS,
                        ignore_eos=True)

    def vllm_rate(batch: int) -> float:
        n = 0
        t0 = time.perf_counter()
        for b0 in range(0, 2 * batch if batch > 1 else 8, batch):
            chunk = [texts[(b0 + k) % len(texts)] for k in range(batch)]
            llm.generate(chunk, [sp] * batch, use_tqdm=False)
            n += batch * NEW_TOKENS
        return n / (time.perf_counter() - t0)

    vllm_rate(1)  # warm-up
    v_tps = {b: vllm_rate(b) for b in (1, 16)}
    for b in (1, 16):
        out[f"transformers_tokens_per_s_b{b}"] = round(hf_tps[b], 1)
        out[f"vllm_tokens_per_s_b{b}"] = round(v_tps[b], 1)
        out[f"vllm_over_transformers_b{b}"] = round(v_tps[b] / hf_tps[b], 2)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
