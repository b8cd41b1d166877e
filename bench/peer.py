"""Training steps of both distillation stages, mindedit vs HF transformers on CPU torch, on the same SmolLM2-135M
weights and text: tokens/s, compile time and peak RSS side by side (forward-only cells: bench/forward.py).

    python bench/peer.py [--stage1-lengths 512] [--lengths 1024 2048] [--steps 4]

The work on both sides, per step of one sequence:
- stage 1 (``--stage1-lengths``): the frozen teacher's forward tapping every layer's attention input and output,
  each student attention on the teacher's input, the normalised MSE to the teacher's output summed over the
  layers, backward, AdamW on the student's attention projections;
- stage 2 (``--lengths``): the frozen teacher's forward (no gradient), the student's forward and backward, forward
  KL(teacher || student) over the vocabulary, AdamW on the student's attention projections.
- mindedit: the default job's GateSWA student (configs/smollm2_135m_gateswa.yaml: window 256 + 4 sink tokens,
  elementwise output gate, pattern SSSF) through the job's own Stage1Loss / Stage2Loss, SingleStage and AdamW, one
  compiled step.
- torch: deep copies of the teacher's attention (stage 1) or of the teacher (stage 2) that see a 256-window +
  4-sink mask on every layer (eager attention computes all T x T scores whatever the mask, so the mixed pattern
  would cost the same); no gate.
Each (implementation, length) runs in a fresh child process, one after another, so that its peak RSS is its own.
The first step (which compiles mindedit's graph) is reported apart; tokens/s is the median of the later steps.
"""
import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from forward import child_result, peak_mb, side_by_side, token_ids, torch_smollm2
from mindedit.utils.allocator import ensure

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs/smollm2_135m_gateswa.yaml"


def timed_steps(step, steps: int) -> dict:
    times, losses = [], []
    for _ in range(steps):
        t = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t)
    return {"first_step_s": times[0], "step_s": statistics.median(times[1:]), "step_times_s": times, "losses": losses}


def child_mindspore(stage: int, n: int, steps: int) -> dict:
    import mindspore as ms
    from mindedit import job
    from mindedit.config import load_job_config
    from mindedit.distill.optim import AdamW
    from mindedit.distill.stage1 import Stage1Loss
    from mindedit.distill.stage2 import Stage2Loss
    from mindedit.parallel.pipeline import SingleStage
    cfg = load_job_config(CONFIG)
    with tempfile.TemporaryDirectory() as tmp:
        models = job.build(cfg, job.prepare_data(cfg, Path(tmp)))
    loss = (Stage1Loss if stage == 1 else Stage2Loss)(models.teacher, models.student)
    opt = AdamW([models.weights[name] for name in models.trainable if "self_attn" in name], weight_decay=0.0)
    micro_step = SingleStage(loss).bind(opt.params, opt.accumulate)
    ids = token_ids(n).astype(np.int32)
    lr, one = ms.Tensor(1e-4, ms.float32), ms.Tensor(1.0, ms.float32)

    def step():  # as the trainer does it: a new input tensor, the loss read before the optimizer's graph starts
        value, aux = micro_step(ms.Tensor(ids))  # (without both, 7.3 instead of 4.6 s per stage-1 step)
        loss = float(value.asnumpy())
        aux.asnumpy()
        opt.apply(lr, one).asnumpy()
        return loss

    return timed_steps(step, steps)


def child_torch(stage: int, n: int, steps: int) -> dict:
    import torch
    teacher = torch_smollm2()
    student = copy.deepcopy(teacher).train()
    for p in teacher.parameters():
        p.requires_grad_(False)
    params = [p for name, p in student.named_parameters() if "self_attn" in name]
    for name, p in student.named_parameters():
        p.requires_grad_("self_attn" in name)
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
    ids = torch.from_numpy(token_ids(n))
    i = torch.arange(n)
    visible = (i[None, :] <= i[:, None]) & ((i[:, None] - i[None, :] < 256) | (i[None, :] < 4))
    mask = torch.zeros(1, 1, n, n).masked_fill(~visible, torch.finfo(torch.float32).min)
    if stage == 1:
        return timed_steps(torch_stage1_step(teacher, student, ids, mask, params, opt), steps)

    def step():
        with torch.no_grad():
            logp_t = torch.log_softmax(teacher(ids).logits, dim=-1)
        logp_s = torch.log_softmax(student(ids, attention_mask=mask).logits, dim=-1)
        loss = torch.nn.functional.kl_div(logp_s, logp_t, log_target=True, reduction="none").sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss)

    return timed_steps(step, steps)


def torch_stage1_step(teacher, student, ids, mask, params, opt):
    """Stage 1 in torch: hooks on the teacher's attentions take each one's input (the normed hidden state, the
    rotary cos/sin) and output; each student attention runs on that input under the window mask."""
    import torch
    taps = []

    def tap(module, args, kwargs, output):
        taps.append((kwargs["hidden_states"], kwargs["position_embeddings"], output[0]))

    for layer in teacher.model.layers:
        layer.self_attn.register_forward_hook(tap, with_kwargs=True)

    def step():
        taps.clear()
        with torch.no_grad():
            teacher(ids)
        loss = 0.0
        for layer, (h, rope, y) in zip(student.model.layers, taps):
            err = layer.self_attn(hidden_states=h, position_embeddings=rope, attention_mask=mask)[0] - y
            loss = loss + (err * err).sum() / (y * y).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss)

    return step


def run_child(impl: str, stage: int, n: int, steps: int) -> dict:
    return child_result([sys.executable, __file__, "--child", impl, "--stage", str(stage), "--lengths", str(n),
                         "--steps", str(steps)], cwd=REPO)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage1-lengths", type=int, nargs="*", default=[512], help="stage-1 cells (none: skip)")
    ap.add_argument("--lengths", type=int, nargs="*", default=[1024, 2048], help="stage-2 cells (none: skip)")
    ap.add_argument("--steps", type=int, default=4, help="steps per cell (the first one is reported apart)")
    ap.add_argument("--child", choices=["mindspore", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--stage", type=int, choices=[1, 2], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.steps < 2:
        raise SystemExit("error: --steps must be at least 2 (the first step is reported apart)")
    if args.child:
        out = (child_mindspore if args.child == "mindspore" else child_torch)(args.stage, args.lengths[0], args.steps)
        out["peak_mb"] = peak_mb()
        print(json.dumps(out))
        return
    speeds = {}
    for stage, lengths, work in ((1, args.stage1_lengths, "teacher forward tapping each attention, every student "
                                  "attention forward + backward on its input, normalised MSE"),
                                 (2, args.lengths, "teacher forward, student forward + backward, KL")):
        rows = []
        for n in lengths:
            rows.append({"tokens": n, "ms": run_child("mindspore", stage, n, args.steps),
                         "torch": run_child("torch", stage, n, args.steps)})
            print(json.dumps(rows[-1]), file=sys.stderr)
        if not rows:
            continue
        side_by_side(f"SmolLM2-135M stage-{stage} step ({work}, AdamW on attention), batch 1, fp32, {os.cpu_count()} "
                     f"CPU cores; median of {args.steps - 1} steps after the first; ratio = mindedit / torch", rows,
                     "step_s", [("ms 1st step s", lambda a, b: f"{a['first_step_s']:.1f}"),
                                ("torch 1st step s", lambda a, b: f"{b['first_step_s']:.1f}")])
        print()
        speeds.update({f"{who}-stage{stage}@{r['tokens']}": round(r["tokens"] / r[k]["step_s"], 1)
                       for r in rows for who, k in (("mindedit", "ms"), ("torch", "torch")) if "step_s" in r[k]})
    print(json.dumps(speeds))


if __name__ == "__main__":
    ensure()  # jemalloc, as the job runs (mindedit.utils.allocator); cells inherit it
    main()
