"""Sparse vs dense MoE on the CPU backend: a tiny Qwen3-MoE (64 experts, top-4), forward and forward + backward
(the shape of a stage-2 step: every expert weight and the input get gradients), tokens/s and peak RSS.

    python bench/moe.py [--tokens 1024] [--repeats 5]

sparse: tokens sorted by expert, each expert on its own rows (mindedit.models.qwen3.SparseMoE, the C++ grouped
matmul); dense: every expert on every token, mixed by zero-padded router weights (SparseMoE.all_experts, the
oracle). The expert FLOPs ratio dense / sparse is num_experts / top_k = 16. Each variant runs in its own process
(peak RSS is the process's); times are the median of --repeats steady-state calls (the first call compiles).
The last line is one JSON object with the numbers.
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mindedit.utils.allocator import ensure

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"model_type": "qwen3_moe", "vocab_size": 4096, "hidden_size": 256, "intermediate_size": 512,
          "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
          "num_experts": 64, "num_experts_per_tok": 4, "moe_intermediate_size": 128, "norm_topk_prob": True,
          "tie_word_embeddings": False}


def run_variant(variant: str, tokens: int, repeats: int) -> dict:
    import numpy as np
    import mindspore as ms
    from mindedit.models import CausalLM, ModelConfig
    from mindedit.models.qwen3 import SparseMoE
    if variant == "dense":
        SparseMoE.construct = SparseMoE.all_experts
    model = CausalLM(ModelConfig.from_hf_dict(CONFIG, "bench/moe.py"))
    rng = np.random.default_rng(0)
    for name, p in model.parameters_and_names():
        value = np.ones(p.shape) if name.endswith("norm.weight") else rng.normal(0, 0.02, p.shape)
        p.set_data(ms.Tensor(value.astype(np.float32)))
    ids = ms.Tensor(rng.integers(0, CONFIG["vocab_size"], (tokens // 512, 512)).astype(np.int32))
    params = model.trainable_params()

    def loss(i):
        return model(i).astype(ms.float32).mean()
    grad_fn = ms.value_and_grad(loss, None, params)

    @ms.jit
    def forward(i):
        return model(i)

    @ms.jit
    def step(i):
        return grad_fn(i)

    out = {"variant": variant}
    for name, fn in (("forward", forward), ("forward_backward", step)):
        t0 = time.perf_counter()
        fn(ids)
        out[f"{name}_first_s"] = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            r = fn(ids)
            (r[0] if isinstance(r, tuple) else r).asnumpy()
            times.append(time.perf_counter() - t0)
        out[f"{name}_tok_s"] = tokens / statistics.median(times)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=1024, help="tokens per call (a multiple of 512; default 1024)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variant", choices=["sparse", "dense"], help=argparse.SUPPRESS)  # one cell, in a subprocess
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.tokens, args.repeats)))
        return
    rows = {}
    for variant in ("sparse", "dense"):
        proc = subprocess.run([sys.executable, __file__, "--variant", variant, "--tokens", str(args.tokens),
                               "--repeats", str(args.repeats)], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{variant} failed:\n{proc.stderr[-2000:]}")
        rows[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    s, d = rows["sparse"], rows["dense"]
    print(f"tiny Qwen3-MoE: {CONFIG['num_hidden_layers']} layers, hidden {CONFIG['hidden_size']}, "
          f"{CONFIG['num_experts']} experts (top {CONFIG['num_experts_per_tok']}, width "
          f"{CONFIG['moe_intermediate_size']}), {args.tokens} tokens per call, CPU backend")
    print(f"{'':<22}{'sparse':>12}{'dense':>12}{'sparse/dense':>14}")
    for key, label in (("forward_tok_s", "forward tok/s"), ("forward_backward_tok_s", "fwd+bwd tok/s")):
        print(f"{label:<22}{s[key]:>12.0f}{d[key]:>12.0f}{s[key] / d[key]:>13.2f}x")
    for key, label in (("forward_first_s", "forward compile+1st s"), ("forward_backward_first_s", "fwd+bwd compile+1st s"),
                       ("peak_rss_mb", "peak RSS MB")):
        print(f"{label:<22}{s[key]:>12.1f}{d[key]:>12.1f}{s[key] / d[key]:>13.2f}x")
    print(json.dumps({"tokens": args.tokens, "sparse": s, "dense": d}))


if __name__ == "__main__":
    ensure()  # jemalloc, as the job runs (mindedit.utils.allocator); cells inherit it
    main()
