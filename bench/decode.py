"""Greedy decode speed and cache bytes after long prompts: the teacher and the converted student (mindedit, the
caches each model's attention makes), next to HF transformers' ``generate`` for the teacher on CPU torch.

    python bench/decode.py [--model MODEL] [--student EXPORT] [--contexts 2048 8192 32768] [--new-tokens 16]
                           [--no-hf]

MODEL defaults to the SmolLM2-135M GGUF (the default job's teacher), EXPORT to runs/smollm2_135m_gateswa/export
(the default job's student). Each (who, context) cell runs in a fresh child process, one after another, so its
peak RSS is its own. A prompt of ``context - new_tokens`` real tokens (State of the Union text, repeated when
short), then ``new_tokens`` greedy tokens; tokens/s is the steady state: the prefill and the first decode step
(which compiles the decode graph) are left out, for HF too (timestamps from a stopping criterion, called once per
generated token). mindedit's number is the job's own measurement (mindedit.eval.generation.greedy_generate, as in
report.json). The last line is one JSON object of tokens/s keyed "<who>@<context>".
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forward import child_result, peak_mb, token_ids, torch_smollm2  # noqa: E402
from mindedit.utils.allocator import ensure  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def child_mindedit(path: str, context: int, new: int) -> dict:
    from mindedit.eval.generation import greedy_generate
    from mindedit.models import from_pretrained
    model = from_pretrained(path)
    r = greedy_generate(model, token_ids(context - new)[0].astype(np.int32), new)
    return {"tokens_per_s": r["decode_tokens_per_s"], "prefill_s": r["prefill_seconds"],
            "cache_mb": r["cache_bytes"] / 2**20}


def child_hf(path: str, context: int, new: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, StoppingCriteria, StoppingCriteriaList
    torch.set_num_threads(os.cpu_count())
    model = torch_smollm2() if path.endswith(".gguf") else AutoModelForCausalLM.from_pretrained(path).eval()
    stamps = []

    class Stamp(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            stamps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    ids = torch.from_numpy(token_ids(context - new))
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, stopping_criteria=StoppingCriteriaList([Stamp()]),
                             return_dict_in_generate=True)
    layers = out.past_key_values.layers if hasattr(out.past_key_values, "layers") else None
    cache = sum(t.nbytes for layer in layers for t in (layer.keys, layer.values)) if layers else float("nan")
    return {"tokens_per_s": (len(stamps) - 2) / (stamps[-1] - stamps[1]), "prefill_s": stamps[0] - start,
            "cache_mb": cache / 2**20}


def run_child(who: str, path: str, context: int, new: int) -> dict:
    return child_result([sys.executable, __file__, "--child", who, "--model", path, "--contexts", str(context),
                         "--new-tokens", str(new)], cwd=REPO)


def main():
    from mindedit.data.assets import smollm2_gguf
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="the teacher: HF directory or .gguf (default: the SmolLM2-135M GGUF)")
    ap.add_argument("--student", default=str(REPO / "runs/smollm2_135m_gateswa/export"),
                    help="the converted model (an export directory)")
    ap.add_argument("--contexts", type=int, nargs="+", default=[2048, 8192, 32768])
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--no-hf", action="store_true", help="skip HF transformers' generate")
    ap.add_argument("--child", choices=["teacher", "student", "hf_teacher"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.new_tokens < 3:
        ap.error(f"--new-tokens {args.new_tokens}: the steady state needs at least 3")
    if args.child:
        fn = child_hf if args.child == "hf_teacher" else child_mindedit
        out = fn(args.model, args.contexts[0], args.new_tokens)
        print(json.dumps(dict(out, peak_mb=peak_mb())))
        return
    teacher = args.model or str(smollm2_gguf())
    if not Path(args.student).exists():
        ap.error(f"--student {args.student}: no such export (run the default job, or pass an export directory)")
    cells = [("teacher", teacher), ("student", args.student)] + ([] if args.no_hf else [("hf_teacher", teacher)])
    results = {}
    print(f"greedy decode after a prompt, batch 1, fp32, {os.cpu_count()} CPU cores, {args.new_tokens} new tokens; "
          f"teacher {teacher}, student {args.student}")
    heads = ["who", "context", "decode tok/s", "vs teacher", "prefill s", "cache MB", "peak MB"]
    print(" | ".join(heads))
    for context in args.contexts:
        for who, path in cells:
            r = run_child(who, path, context, args.new_tokens)
            if "error" in r:
                print(f"{who} | {context} | {r['error']}", flush=True)
                continue
            results[f"{who}@{context}"] = round(r["tokens_per_s"], 3)
            base = results.get(f"teacher@{context}")
            cells_out = [who, str(context), f"{r['tokens_per_s']:.2f}",
                         f"{r['tokens_per_s'] / base:.2f}x" if base else "", f"{r['prefill_s']:.1f}",
                         f"{r['cache_mb']:.1f}", f"{r['peak_mb']:.0f}"]
            print(" | ".join(c.rjust(len(h)) for c, h in zip(cells_out, heads)), flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    ensure()  # jemalloc, as the job runs (mindedit.utils.allocator); cells inherit it
    main()
