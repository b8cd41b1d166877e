"""``python -m mindedit plan``: per-device memory of a job's training stages under its parallel layout, the FLOPs
per token of each stage and the wall time of the config's token budget on its cluster.

An estimate from shapes alone (no weights are loaded), for the code as it is built here:
- parameters: the teacher (the shared frozen backbone, teacher attention included) and the student's own
  parameters (new attention modules, counted on zero-initialised modules through their TP plans, plus the copies the stage-2 ``trainable`` set makes), in the model dtype,
  split by the layout: heads, MLP columns and vocabulary over tp, experts over ep (over tp when ep = 1), layers
  over pp (the largest stage counts, with the embedding or the head it holds);
- gradients: the trainable parameters in the model dtype plus their fp32 accumulators;
- optimizer: AdamW m and v in fp32, plus fp32 master weights when the model dtype is not fp32;
- activations of one micro-batch (tokens = batch_size / dp / micro_batches x seq_len), kept for the backward:
  stage 1 the teacher's taps (input and output of each local attention) and each student attention's tensors
  (q, k, v, o, and what the attention face keeps: ``reference`` the [T, T] float32 scores and probabilities of
  every head, the fused faces O(T): ``ascend`` the operator's softmax max/sum, 8 float32 each per head and row,
  ``cpu`` one float32 log-sum-exp, plus the [T, sink_tokens] scores of the split's sink piece);
  stage 2 every local layer's residual stream, attention, and MLP or experts (the sparse dispatch keeps T x top_k
  permuted rows; with ep > 1 the all-gather EP dispatch keeps T x top_k rows of the gathered tokens at full
  expert width, zero outside the local experts' rows), and
  the vocabulary-sized logits of teacher and student;
plus a fixed 10% workspace margin. It fails with the largest term named when a stage does not fit.

FLOPs per token (whole model; a multiply-add is 2 FLOPs): every linear layer 2 x its parameters (MoE: the router
plus the top_k experts each token runs, with or without EP), the
attention core 2 x heads x (qk + v head dims) x the mean number of keys a query sees at the stage's length
(causal, window, sink tokens), the head 2 x hidden x vocab. Stage 1 = teacher forward + each student attention's
forward and backward (2x its forward). Stage 2 = teacher forward + student forward + backward: input gradients
through the whole student (1x forward), the attention core's second product pair (1x core), weight gradients of
the trainable parameters (2 x their count), and one more forward when pp > 1 (the pipeline recomputes it). The wall
time divides the token budget's FLOPs by devices x peak x utilisation x the pipeline's busy fraction (stage 1: one
batch crosses the stages in turn, 1 / pp; stage 2, GPipe: m / (m + pp - 1)).
"""
import re
from dataclasses import dataclass

import numpy as np

from mindedit.attention.targets import layer_modules
from mindedit.config import DTYPE_BYTES
from mindedit.errors import MindeditError
from mindedit.parallel.parallelize import local_param_count

UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30,
         "tib": 2 ** 40}
WORKSPACE = 0.10
# Ascend 910B: 280 TFLOPS peak in FP16 and BF16 (Gitee AI's 910B cluster page, "2.2 supported precisions":
# https://ai.gitee.com/docs/compute/clusters_gpu/ascend_gpu). The utilisation is an assumption, not a measurement.
PEAK_TFLOPS = 280.0
MFU = 0.35
FACES = ("ascend", "cpu", "reference")


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in UNITS:
        raise MindeditError(f"--device-memory {text!r}: expected a size like 64GiB, 32GB or 65536MiB")
    return int(float(m.group(1)) * UNITS[m.group(2).lower()])


def fmt(n: float) -> str:
    return f"{n / 2 ** 30:8.2f} GiB"


@dataclass
class Counts:
    """Parameter counts (elements) per device."""
    backbone: float = 0.0        # frozen teacher parameters (attention, norms, MLP/experts, embedding, head)
    student: float = 0.0         # the student's own parameters
    trainable1: float = 0.0      # trainable in stage 1 (student attention)
    trainable2: float = 0.0      # trainable in stage 2


def mlp_params(cfg, layer: int, tp: int, ep: int) -> float:
    h = cfg.hidden_size
    if cfg.is_moe_layer(layer):
        per_expert = 3 * h * cfg.moe_intermediate_size
        return h * cfg.num_experts + (cfg.num_experts // ep) * (per_expert if ep > 1 else per_expert / tp)
    return 3 * h * cfg.intermediate_size / tp


def mlp_flops(cfg, layer: int) -> float:
    """Forward FLOPs per token of a layer's MLP or experts as dispatched: the router and top_k experts."""
    h = cfg.hidden_size
    if cfg.is_moe_layer(layer):
        return 2 * h * (cfg.num_experts + cfg.num_experts_per_tok * 3 * cfg.moe_intermediate_size)
    return 2 * 3 * h * cfg.intermediate_size


def attention_shape(m) -> tuple:
    """(heads, qk head dim, v head dim, window, sink tokens) of an attention module; MLA as it trains (the naive,
    per-head form)."""
    if hasattr(m, "nope"):
        return m.num_heads, m.nope + m.rope, m.v_dim, 0, 0
    return m.num_heads, m.head_dim, m.head_dim, getattr(m, "window", 0), getattr(m, "sink_tokens", 0)


def mean_keys(seq: int, window: int, sinks: int) -> float:
    """Mean number of keys a query sees in a causal sequence of ``seq`` tokens (window 0: every earlier one)."""
    seen = np.arange(1, seq + 1, dtype=np.float64)
    if window:
        seen = np.minimum(seen, window) + np.clip(seen - window, 0, sinks)
    return float(seen.mean())


def attention_flops(m, seq: int) -> tuple:
    """(projections, core) forward FLOPs per token of attention module ``m`` at sequence length ``seq``."""
    heads, qk, v, window, sinks = attention_shape(m)
    return 2 * local_param_count(m, 1), 2 * heads * (qk + v) * mean_keys(seq, window, sinks)


def attention_memory(m, tokens: int, seq: int, tp: int, face: str, bytes_: int, hidden: int) -> float:
    """Bytes one device keeps of student attention ``m`` for its backward (``tokens`` in sequences of ``seq``):
    its input and output, q, k, v (every head) and o, and what the face keeps of the softmax."""
    heads, qk, v, window, sinks = attention_shape(m)
    n = heads / tp
    kept = tokens * (2 * hidden + n * (2 * qk + 2 * v)) * bytes_
    if face == "reference":
        return kept + tokens * n * seq * 4 * 2  # [T, T] float32 scores and probabilities per head
    stats = 8 * 4 * 2 if face == "ascend" else 4  # FlashAttentionScore's softmax max/sum vs one log-sum-exp
    return kept + tokens * n * (stats + (sinks * 4 * 2 if window else 0))


def stage_seq(train: dict, name: str) -> int:
    """A stage's sequence length (4096 when the config leaves it to the data)."""
    return train[name]["seq_len"] or 4096


def stage_flops(job, modules: tuple = None) -> dict:
    """{stage: {part: FLOPs per token}} of the whole model at each stage's sequence length (module docstring);
    ``modules``: layer_modules' (teachers, students) when the caller has built them."""
    cfg, t, dims = job.model_shapes(), job.train, job.dims
    teachers, students = modules or layer_modules(cfg, job.target)
    layers = range(cfg.num_hidden_layers)
    mlp = sum(mlp_flops(cfg, i) for i in layers)
    head = 2 * cfg.hidden_size * cfg.vocab_size
    out = {}
    for name in ("stage1", "stage2"):
        seq = stage_seq(t, name)
        teacher = mlp + head + sum(sum(attention_flops(m, seq)) for m in teachers)
        s_attn = [attention_flops(m, seq) for m in students]
        attn = sum(p + c for p, c in s_attn)
        if name == "stage1":
            parts = {"teacher forward": teacher, "student forward": attn, "student backward": 2 * attn}
        else:
            forward = mlp + head + attn
            weights = sum(p for p, _ in s_attn) + (mlp + head if t["stage2"]["trainable"] == "all" else 0)
            parts = {"teacher forward": teacher, "student forward": forward,
                     "student backward": forward * (2 if dims.pp > 1 else 1) + sum(c for _, c in s_attn) + weights}
        out[name] = parts
    return out


def estimate(job, device_memory: int, face: str = "ascend", peak_tflops: float = None, mfu: float = None) -> dict:
    """{stage: {term: bytes, flops, hours}} for the largest pipeline stage under attention ``face``, plus totals and
    the verdict; the time estimate at ``peak_tflops`` (default PEAK_TFLOPS) x ``mfu`` (default MFU)."""
    if face not in FACES:
        raise MindeditError(f"--face {face!r}: expected one of {', '.join(FACES)}")
    peak_tflops, mfu = peak_tflops or PEAK_TFLOPS, mfu or MFU
    if not (peak_tflops > 0 and 0 < mfu <= 1):
        raise MindeditError(f"--peak-tflops {peak_tflops} / --mfu {mfu}: expected a positive peak and 0 < mfu <= 1")
    cfg, target, p, t = job.model_shapes(), job.target, job.parallel, job.train
    dims = job.dims
    tp, ep, pp, dp, mb = dims.tp, dims.ep, dims.pp, dims.dp, p["micro_batches"]
    bytes_ = DTYPE_BYTES[job.dtype]
    trainable = t["stage2"]["trainable"]
    h, v = cfg.hidden_size, cfg.vocab_size
    teachers, students = layer_modules(cfg, target)  # counted by the modules and their TP plans
    worst = None
    for stage in range(pp):
        layers = dims.stage_layers(cfg.num_hidden_layers, stage)
        c = Counts()
        for i in layers:
            teacher_attn, student_attn = local_param_count(teachers[i], tp), local_param_count(students[i], tp)
            mlp, norms = mlp_params(cfg, i, tp, ep), 2 * h
            c.backbone += teacher_attn + mlp + norms
            c.student += student_attn
            c.trainable1 += student_attn
            c.trainable2 += student_attn + (norms if trainable != "attention" else 0) + (mlp if trainable == "all"
                                                                                           else 0)
            if trainable != "attention":
                c.student += norms + (mlp if trainable == "all" else 0)
        ends = (stage == 0) + (stage == pp - 1 and not cfg.tie_word_embeddings) + \
            (stage == pp - 1 and cfg.tie_word_embeddings and pp > 1)
        table = ends * v * h / tp + (h if stage == pp - 1 else 0)
        c.backbone += table
        if trainable == "all":
            c.student += table
            c.trainable2 += table
        if worst is None or c.backbone + c.student > worst[1].backbone + worst[1].student:
            worst = (stage, c, layers)
    stage, c, layers = worst
    moe = ("" if not cfg.num_experts else "; MoE: all-gather EP dispatch, sparse (T x top_k rows of the EP group)"
           if ep > 1 else "; MoE: sparse dispatch (T x top_k rows)")
    out = {"layout": f"dp={dp} tp={tp} pp={pp} ep={ep} micro_batches={mb}{moe}", "face": face,
           "device_memory": device_memory, "pipeline_stage": stage, "layers_on_stage": len(layers),
           "devices": dims.world, "peak_tflops": peak_tflops, "mfu": mfu, "stages": {}}
    flops = stage_flops(job, (teachers, students))
    for name, trainable_count in (("stage1", c.trainable1), ("stage2", c.trainable2)):
        seq = stage_seq(t, name)
        tokens = max(1, t["batch_size"] // dp // (mb if name == "stage2" else 1)) * seq
        attn_act = [attention_memory(students[i], tokens, seq, tp, face, bytes_, h) for i in layers]
        if name == "stage1":  # the teacher's taps (input and output) and the student attention, every layer
            act = sum(2 * tokens * h * bytes_ + a for a in attn_act)
        else:
            per_layer = []
            for i, a in zip(layers, attn_act):
                if cfg.is_moe_layer(i) and ep > 1:  # all-gather EP: T x top_k rows of the group, experts whole
                    rows = tokens * ep / tp * cfg.num_experts_per_tok
                    mlp_act = rows * (3 * cfg.moe_intermediate_size + 2 * h) * bytes_
                elif cfg.is_moe_layer(i):  # sparse dispatch: T x top_k permuted rows, each expert width / tp
                    rows = tokens * cfg.num_experts_per_tok
                    mlp_act = rows * (3 * cfg.moe_intermediate_size / tp + 2 * h) * bytes_
                else:
                    mlp_act = tokens * 3 * cfg.intermediate_size / tp * bytes_
                per_layer.append(tokens * 4 * h * bytes_ + a + mlp_act)
            act = sum(per_layer) + (tokens * v / tp * 4 * 6 if stage == pp - 1 else 0)
        terms = {
            "teacher / shared backbone parameters": c.backbone * bytes_,
            "student parameters": c.student * bytes_,
            "gradients (+ fp32 accumulators)": trainable_count * (bytes_ + 4),
            "optimizer state (AdamW m, v" + (", fp32 master)" if bytes_ != 4 else ")"):
                trainable_count * (8 + (4 if bytes_ != 4 else 0)),
            f"activations ({tokens} tokens per micro-batch)": act,
        }
        total = sum(terms.values()) * (1 + WORKSPACE)
        busy = 1 / pp if name == "stage1" else mb / (mb + pp - 1)
        per_token = sum(flops[name].values())
        budget = t[name]["tokens"]
        seconds = budget * per_token / (dims.world * peak_tflops * 1e12 * mfu * busy)
        out["stages"][name] = {"terms": terms, "total": total, "fits": total <= device_memory,
                               "largest": max(terms, key=terms.get), "flops_per_token": flops[name],
                               "tokens": budget, "pipeline_busy": busy, "hours": seconds / 3600}
    return out


def format_plan(job, plan: dict) -> str:
    lines = [f"{job.name}: {plan['layout']}, largest pipeline stage {plan['pipeline_stage']} "
             f"({plan['layers_on_stage']} layers), device memory {fmt(plan['device_memory']).strip()}, "
             f"attention face {plan['face']}"]
    for name, s in plan["stages"].items():
        lines.append(f"  {name}")
        for term, b in s["terms"].items():
            lines.append(f"    {term:<48}{fmt(b)}")
        lines.append(f"    {'total (+' + str(int(WORKSPACE * 100)) + '% workspace)':<48}{fmt(s['total'])}   "
                     + ("fits" if s["fits"] else "DOES NOT FIT"))
        f = s["flops_per_token"]
        lines.append("    GFLOP per token: " + ", ".join(f"{k} {x / 1e9:.2f}" for k, x in f.items())
                     + f"; total {sum(f.values()) / 1e9:.2f}")
        lines.append(f"    {s['tokens'] / 1e6:g}M tokens on {plan['devices']} devices at {plan['peak_tflops']:g} "
                     f"TFLOPS x {plan['mfu']:.0%} utilisation (assumed) x {s['pipeline_busy']:.0%} pipeline busy: "
                     f"~{s['hours']:.1f} h")
    hours = sum(s["hours"] for s in plan["stages"].values())
    lines.append(f"  both stages: ~{hours:.1f} h ({hours / 24:.1f} days) on {plan['devices']} devices")
    return "\n".join(lines)
