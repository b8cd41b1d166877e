"""``python -m mindedit plan``: per-device memory of a job's training stages under its parallel layout.

An estimate from shapes alone (no weights are loaded), for the code as it is built here:
- parameters: the teacher (the shared frozen backbone, teacher attention included) and the student's own
  parameters (new attention modules, counted on zero-initialised modules through their TP plans, plus the copies the stage-2 ``trainable`` set makes), in the model dtype,
  split by the layout: heads, MLP columns and vocabulary over tp, experts over ep (over tp when ep = 1), layers
  over pp (the largest stage counts, with the embedding or the head it holds);
- gradients: the trainable parameters in the model dtype plus their fp32 accumulators;
- optimizer: AdamW m and v in fp32, plus fp32 master weights when the model dtype is not fp32;
- activations of one micro-batch (tokens = batch_size / dp / micro_batches x seq_len), kept for the backward:
  stage 1 the teacher's taps (input and output of each local attention) and each student attention's tensors;
  stage 2 every local layer's residual stream, attention, and MLP or experts (the sparse dispatch keeps T x top_k
  permuted rows; with ep > 1 the portable EP dispatch runs the local experts on all tokens of the EP group), and
  the vocabulary-sized logits of teacher and student;
plus a fixed 10% workspace margin. It fails with the largest term named when a stage does not fit.
"""
import re
from dataclasses import dataclass

from mindedit.attention.targets import layer_modules
from mindedit.config import DTYPE_BYTES
from mindedit.errors import MindeditError
from mindedit.parallel.parallelize import local_param_count

UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30,
         "tib": 2 ** 40}
WORKSPACE = 0.10


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


def estimate(job, device_memory: int) -> dict:
    """{stage: {term: bytes}} for the largest pipeline stage, plus totals and the verdict."""
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
            worst = (stage, c, len(layers))
    stage, c, n_layers = worst
    moe = ("" if not cfg.num_experts else "; MoE: portable EP dispatch (local experts on every gathered token)"
           if ep > 1 else "; MoE: sparse dispatch (T x top_k rows)")
    out = {"layout": f"dp={dp} tp={tp} pp={pp} ep={ep} micro_batches={mb}{moe}", "device_memory": device_memory,
           "pipeline_stage": stage, "layers_on_stage": n_layers, "stages": {}}
    n, d = cfg.num_attention_heads // tp, cfg.head_dim
    for name, trainable_count in (("stage1", c.trainable1), ("stage2", c.trainable2)):
        seq = t[name]["seq_len"] or 4096
        tokens = max(1, t["batch_size"] // dp // (mb if name == "stage2" else 1)) * seq
        attn_act = tokens * (4 * n * d + 2 * h) * bytes_
        if name == "stage1":
            act = n_layers * (2 * tokens * h * bytes_ + attn_act)
        else:
            per_layer = []
            for i in range(n_layers):
                if cfg.is_moe_layer(i) and ep > 1:  # portable EP: the local experts on every gathered token
                    group_tokens = tokens * ep / tp
                    mlp_act = group_tokens * (cfg.num_experts // ep) * (3 * cfg.moe_intermediate_size + h) * bytes_
                elif cfg.is_moe_layer(i):  # sparse dispatch: T x top_k permuted rows, each expert width / tp
                    rows = tokens * cfg.num_experts_per_tok
                    mlp_act = rows * (3 * cfg.moe_intermediate_size / tp + 2 * h) * bytes_
                else:
                    mlp_act = tokens * 3 * cfg.intermediate_size / tp * bytes_
                per_layer.append(tokens * 4 * h * bytes_ + attn_act + mlp_act)
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
        out["stages"][name] = {"terms": terms, "total": total, "fits": total <= device_memory,
                               "largest": max(terms, key=terms.get)}
    return out


def format_plan(job, plan: dict) -> str:
    lines = [f"{job.name}: {plan['layout']}, largest pipeline stage {plan['pipeline_stage']} "
             f"({plan['layers_on_stage']} layers), device memory {fmt(plan['device_memory']).strip()}"]
    for name, s in plan["stages"].items():
        lines.append(f"  {name}")
        for term, b in s["terms"].items():
            lines.append(f"    {term:<48}{fmt(b)}")
        lines.append(f"    {'total (+' + str(int(WORKSPACE * 100)) + '% workspace)':<48}{fmt(s['total'])}   "
                     + ("fits" if s["fits"] else "DOES NOT FIT"))
    return "\n".join(lines)
