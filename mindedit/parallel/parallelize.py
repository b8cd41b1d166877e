"""``parallelize(models, dims, rank, world)``: shards built models in place for this rank and returns the Layout
that the trainer needs (gradient reduction, global norm, full checkpoints). Model files stay free of all of it.

Tensor parallel (heads split over the TP group; DESIGN.md "Parallelism"): each attention class and the MLP declare
their plan (``TP_PLAN``: submodule -> style, read by ``_Sharder.module``), so this file knows no module's fields:
    GQA / GateSWA   q/k/v/gate column-parallel by head (KV heads split, or replicated when tp > KV heads), o_proj
                    row-parallel, sink logits sliced by head
    MLA             q (or q_b) and kv_b by head, o_proj row-parallel; the latent down-projection kv_a (and q_a)
                    shared: computed on every rank from f(x), its gradient summed over TP
    MLP / experts   gate/up column, down row (experts whole per rank instead when ep > 1)
    vocabulary      embedding, LM head and every loss reduction split by vocab rows (mindedit.parallel.tensor)
The modules' reshapes use -1 heads, so a rank holding some heads runs the same code.
Per-head norms (q_norm, k_norm) and the replicated MLA pieces get partial gradients on each rank (each rank's
heads only): the Layout sums them over TP before the data-parallel mean.

Teacher and student share their frozen backbone cells; ``parallelize`` shards each shared cell once.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np
import mindspore as ms
from mindspore import Parameter, nn

from mindedit.layers import Embedding, Linear, RMSNorm
from mindedit.models.qwen3 import SparseMoE
from mindedit.parallel.comm import Group, ReduceFromGroup, SINGLE, all_reduce, group, world_group
from mindedit.parallel.dims import ParallelDims
from mindedit.parallel.expert import ExpertParallelMoE, TensorParallelMoE
from mindedit.parallel.pipeline import PipelineStage1Loss, PipelineStage2, SingleStage
from mindedit.parallel.tensor import ColumnParallelLinear, NormToVocab, RowParallelLinear, Vocab, \
    VocabParallelEmbedding


@dataclass
class Spec:
    """How this rank holds one parameter of the full model."""
    full_shape: tuple
    dim: Optional[int] = None          # the sliced axis (None: the whole tensor)
    index: Optional[np.ndarray] = None  # which entries of the full tensor along ``dim``
    lead: bool = True                  # contributes this piece when a full tensor is assembled
    copies: int = 1                    # ranks in the world holding this same piece (global-norm weighting)
    sum_group: Group = SINGLE          # partial gradients summed over this group
    mean_group: Group = SINGLE         # replicas over data: gradients summed over this group ...
    divisor: int = 1                   # ... and divided by this (the dp degree: the loss is a mean over dp)

    def take(self, full: np.ndarray) -> np.ndarray:
        return full if self.dim is None else np.take(full, self.index, axis=self.dim)


class Layout:
    """This rank's view of the sharded job: groups, per-parameter Specs, and the collective operations on them."""

    def __init__(self, dims: ParallelDims, rank: int, world: int):
        self.dims, self.rank = dims, rank
        c = dims.coords(rank)
        self.coords = c
        self.tp = group(dims.tp_group(rank), rank)
        self.dp = group(dims.dp_group(rank), rank)
        self.ep = group(dims.ep_group(rank), rank)
        self.world = world_group(rank, world)
        self.vocab = Vocab()
        self.specs = {}  # id(Parameter) -> (Parameter, Spec)
        # pipeline: this stage's layers and the links to the neighbouring stages (None at the ends)
        self.pp = group(dims.pp_group(rank), rank)
        self.prev = group([dims.rank(c["dp"], c["tp"], c["pp"] - 1), rank], rank) if c["pp"] > 0 else None
        self.next = group([rank, dims.rank(c["dp"], c["tp"], c["pp"] + 1)], rank) if c["pp"] < dims.pp - 1 else None
        self.layers = None  # set by parallelize: range of this stage's layers
        # a piece replicated over TP is gathered from tp rank 0 of dp replica 0
        self.replica_lead = c["dp"] == 0 and c["tp"] == 0

    @classmethod
    def single(cls) -> "Layout":
        """One process: every collective is the identity."""
        return cls(ParallelDims(), 0, 1)

    # -- schedules (the pipeline wrapping of each stage's loss) -----------------------------------------------
    def stage1(self, loss, cfg):
        """Stage 1's schedule for this rank: the loss cell itself, or this pipeline stage's share of it."""
        if self.dims.pp > 1:
            loss = PipelineStage1Loss(loss, self.layers, cfg.num_hidden_layers, self.prev, self.next, self.pp,
                                      cfg.hidden_size)
        return SingleStage(loss)

    def stage2(self, loss, cfg, micro_batches: int):
        """Stage 2's schedule for this rank: the loss cell itself, or GPipe over ``micro_batches``."""
        if self.dims.pp == 1:
            return SingleStage(loss)
        return PipelineStage2(loss, self.layers, self.prev, self.next, self.pp, micro_batches, cfg.hidden_size)

    def spec(self, p) -> Spec:
        s = self.specs.get(id(p), (None, None))[1]
        if s is None:  # whole and replicated over the stage's dp x tp ranks
            s = self.set_spec(p, Spec(tuple(p.shape), lead=self.replica_lead, copies=self.dims.dp * self.dims.tp,
                                      mean_group=self.dp, divisor=self.dims.dp))
        return s

    def set_spec(self, p, spec: Spec) -> Spec:
        self.specs[id(p)] = (p, spec)  # holding p keeps its id from being reused by another Parameter
        return spec

    # -- gradients -------------------------------------------------------------------------------------------
    def grad_reducer(self, params) -> "GradReducer":
        return GradReducer([self.spec(p) for p in params])

    def norm_weights(self, params) -> tuple:
        return tuple(1.0 / self.spec(p).copies for p in params)

    # -- full tensors (checkpoints) ---------------------------------------------------------------------------
    def gather(self, named: dict, shapes: dict = None, spec_of: dict = None) -> dict:
        """{name: full numpy array} from {name: local Parameter}. A collective: every rank passes the same
        ``shapes`` ({name: full shape}, default: the local ones), holding a piece of some of them (experts and
        pipeline stages live on some ranks only). ``spec_of`` maps a name to the Parameter whose Spec it follows
        (optimizer state follows its parameter)."""
        shapes = shapes or {n: tuple(p.shape) for n, p in named.items()}
        out = {}
        for name in sorted(shapes):
            p = named.get(name)
            value = None
            if p is not None:
                t = p.value()
                value = (t.astype(ms.float32) if t.dtype.is_floating_point else t).asnumpy().copy()
            if self.world.size == 1:
                out[name] = value
                continue
            full = np.zeros(shapes[name], np.float32)
            s = self.spec((spec_of or {}).get(name, p)) if p is not None else None
            if s is not None and s.lead:
                idx = [slice(None)] * full.ndim
                if s.dim is not None:
                    idx[s.dim] = s.index
                full[tuple(idx)] = value
            full = all_reduce(ms.Tensor(full), self.world).asnumpy()
            out[name] = full.astype(value.dtype if value is not None else np.float32)
        return out

    def take(self, named: dict, spec_of: dict = None):
        """(name, full array) -> this rank's piece: what checkpoint.load needs to restore a sharded run."""
        return lambda name, full: self.spec((spec_of or {}).get(name, named[name])).take(full)


class GradReducer(nn.Cell):
    """Per trainable parameter: sum partial gradients over its sum group, then average over its data replicas."""

    def __init__(self, specs):
        super().__init__()
        self.sums = nn.CellList([ReduceFromGroup(s.sum_group) for s in specs])
        self.means = nn.CellList([ReduceFromGroup(s.mean_group) for s in specs])
        self.divisors = tuple(float(s.divisor) for s in specs)

    def construct(self, grads):
        out = ()
        for i, g in enumerate(grads):
            out = out + (self.means[i](self.sums[i](g)) / self.divisors[i],)
        return out


# -- sharding ------------------------------------------------------------------------------------------------
class _Sharder:
    def __init__(self, layout: Layout, cfg):
        self.L, self.cfg = layout, cfg
        self.done = {}  # id(original cell) -> replacement, so shared teacher/student cells are sharded once
        d, c = layout.dims, layout.coords
        self.tp_size, self.tp_rank = d.tp, c["tp"]

    def swap(self, owner, attr: str, make):
        old = getattr(owner, attr)
        names = {n: p.name for n, p in old.parameters_and_names()}
        if id(old) not in self.done:  # (old, new): holding old keeps its id from being reused by a new object
            self.done[id(old)] = (old, make(old))
        new = self.done[id(old)][1]
        setattr(owner, attr, new)
        for n, p in new.parameters_and_names():  # setattr re-prefixes names; keep the original ones
            if n in names:
                p.name = names[n]

    def sliced(self, p, full_shape, dim: int, index, parts: int, sum_group: Group = SINGLE):
        """Registers p as holding ``index`` of its full tensor along ``dim``; ``parts`` distinct pieces exist."""
        L = self.L
        reps = self.tp_size // parts  # TP ranks holding the same piece
        L.set_spec(p, Spec(tuple(full_shape), dim, np.asarray(index), lead=L.coords["dp"] == 0 and
                           self.tp_rank % reps == 0, copies=L.dims.dp * reps, sum_group=sum_group, mean_group=L.dp,
                           divisor=L.dims.dp))

    def column(self, owner, attr, rows, parts, sum_group=SINGLE, copy=True):
        def make(lin):
            new = ColumnParallelLinear.shard(lin, rows, self.L.tp if copy else SINGLE)
            self.sliced(new.weight, lin.weight.shape, 0, rows, parts, sum_group)
            if new.bias is not None:
                self.sliced(new.bias, lin.bias.shape, 0, rows, parts, sum_group)
            return new
        self.swap(owner, attr, make)

    def row(self, owner, attr, cols):
        def make(lin):
            new = RowParallelLinear.shard(lin, cols, self.L.tp)
            self.sliced(new.weight, lin.weight.shape, 1, cols, self.tp_size)
            return new
        self.swap(owner, attr, make)

    def replicated_partial(self, cell):
        """Parameters computed on every TP rank whose output feeds only this rank's heads: sum over TP."""
        for p in cell.get_parameters():
            s = self.L.spec(p)
            s.sum_group = self.L.tp

    def heads(self, n: int, width: int):
        """Row indices of this rank's heads in an [n * width] projection."""
        per = n // self.tp_size
        start = self.tp_rank * per
        return np.arange(start * width, (start + per) * width)

    def unit_rows(self, unit: str, counts: dict, n: int):
        """(this rank's indices among n rows or columns split by ``unit``, distinct pieces, partial-gradient group)."""
        if unit == "rows":
            return self.heads(n, 1), self.tp_size, SINGLE
        units = counts[unit]
        width = n // units
        if units % self.tp_size == 0:
            return self.heads(units, width), self.tp_size, SINGLE
        # tp > KV heads: each KV head is replicated on the tp // kv ranks whose query heads use it, which sum its
        # partial gradients
        reps = self.tp_size // units
        j = self.tp_rank // reps
        base = self.L.rank - self.tp_rank
        return np.arange(j * width, (j + 1) * width), units, group([base + j * reps + i for i in range(reps)],
                                                                    self.L.rank)

    # -- modules ----------------------------------------------------------------------------------------------
    def module(self, cell):
        """Shards ``cell`` (an attention or an MLP) for tensor parallelism by the plan it declares (TP_PLAN:
        submodule -> style:unit, see mindedit.attention.gqa.GQAAttention); submodules the instance lacks are
        skipped (a gate that is off, a query without its low-rank path)."""
        if id(cell) in self.done:
            return
        self.done[id(cell)] = cell
        plan = getattr(type(cell), "TP_PLAN", None)
        if plan is None:
            raise TypeError(f"parallelize: {type(cell).__name__} declares no TP_PLAN (how tensor parallelism shards "
                            f"it)")
        counts = {"heads": getattr(cell, "num_heads", None), "kv_heads": getattr(cell, "num_kv_heads", None)}
        for name, style in plan.items():
            part = getattr(cell, name, None)
            if part is None:
                continue
            kind, _, unit = style.partition(":")
            if kind == "replicated":
                self.replicated_partial(part)
            elif kind == "shared":
                self.column(cell, name, np.arange(part.weight.shape[0]), 1)
                self.replicated_partial(getattr(cell, name))
            elif kind in ("colwise", "colwise_local"):
                rows, parts, partial = self.unit_rows(unit, counts, part.weight.shape[0])
                self.column(cell, name, rows, parts, partial, copy=kind == "colwise")
            elif kind == "rowwise":
                self.row(cell, name, self.unit_rows(unit, counts, part.weight.shape[1])[0])
            elif kind == "param":
                rows, parts, _ = self.unit_rows(unit, counts, part.shape[0])
                new = Parameter(ms.Tensor(part.value().asnumpy()[rows]), name=part.name,
                                requires_grad=part.requires_grad)
                setattr(cell, name, new)
                self.sliced(new, part.shape, 0, rows, parts)
            else:
                raise ValueError(f"parallelize: {type(cell).__name__}.TP_PLAN[{name!r}] = {style!r}: unknown style")

    def moe(self, layer):
        d = self.L.dims
        if d.ep == 1:
            if self.tp_size == 1:
                return

            def make(old):
                for expert in old.experts:
                    self.module(expert)
                return TensorParallelMoE.shard(old, self.L.tp)
            self.swap(layer, "mlp", make)
            return

        def make(old):
            per = old.num_experts // d.ep
            e0 = self.L.coords["ep"] * per
            new = ExpertParallelMoE.shard(old, tuple(range(e0, e0 + per)), self.L.tp, self.L.ep)
            # an expert lives on the ranks of this stage with the same EP index; they average its gradients
            first = self.L.rank - self.L.rank % (d.dp * d.tp)  # this pipeline stage's dp x tp block
            same = [r for r in range(first, first + d.dp * d.tp) if d.coords(r)["ep"] == self.L.coords["ep"]]
            mean = group(same, self.L.rank)
            local_index = self.L.coords["dp"] * d.tp + self.L.coords["tp"]
            for e in new.local:
                for p in new.experts[e].get_parameters():
                    self.L.set_spec(p, Spec(tuple(p.shape), lead=local_index < d.ep, copies=len(same),
                                            mean_group=mean, divisor=d.dp))
            return new
        self.swap(layer, "mlp", make)

    def vocab(self, model):
        L, tp, v = self.L, self.tp_size, self.cfg.vocab_size
        per = v // tp
        start = self.tp_rank * per
        rows = np.arange(start, start + per)
        body = model.model

        def embedding(old):
            new = VocabParallelEmbedding.shard(old, start, per, L.tp)
            self.sliced(new.weight, old.weight.shape, 0, rows, tp)
            return new
        if isinstance(body.embed_tokens, Embedding):  # (absent on middle pipeline stages)
            self.swap(body, "embed_tokens", embedding)
        if isinstance(body.norm, RMSNorm):
            self.swap(body, "norm", lambda old: NormToVocab.wrap(old, L.tp))
        if not self.cfg.tie_word_embeddings and isinstance(getattr(model, "lm_head", None), Linear):
            self.column(model, "lm_head", rows, tp, copy=False)
        L.vocab = Vocab(start, per, L.tp)

    def stage(self, model):
        """Keeps this pipeline stage's layers (the others become empty cells, so parameter paths stay global);
        the embedding on the first stage (and the last when the head is tied to it), norm and head on the last."""
        L = self.L
        s, last = L.coords["pp"], L.dims.pp - 1
        body = model.model
        for i in range(len(body.layers)):
            if i not in L.layers:
                body.layers[i] = nn.Cell()
        tied = self.cfg.tie_word_embeddings
        if s != 0 and not (tied and s == last):
            body.embed_tokens = nn.Cell()
        if s != last:
            body.norm = nn.Cell()
            if not tied:
                model.lm_head = nn.Cell()

    def tied_pair(self, model):
        """With a tied head over pp > 1 stages the first and last stages both hold the table; each gets part of
        its gradient (input side, output side), summed over the pair; the first stage's copy is the one saved."""
        L, d = self.L, self.L.dims
        s, last = L.coords["pp"], d.pp - 1
        if self.cfg.tie_word_embeddings and last > 0 and s in (0, last):
            p = model.model.embed_tokens.weight
            if id(p) in self.done:  # shared by teacher and student
                return
            self.done[id(p)] = p
            spec = L.spec(p)
            pair = group([d.rank(L.coords["dp"], L.coords["tp"], 0), d.rank(L.coords["dp"], L.coords["tp"], last)],
                         L.rank)
            spec.sum_group, spec.copies, spec.lead = pair, spec.copies * 2, spec.lead and s == 0


def local_param_count(cell, tp: int) -> float:
    """Parameters (elements) one tensor-parallel rank holds of ``cell``, from the plan it declares (TP_PLAN), as
    ``parallelize`` would shard it: what ``plan`` counts."""
    plan = getattr(type(cell), "TP_PLAN", {})
    counts = {"heads": getattr(cell, "num_heads", None), "kv_heads": getattr(cell, "num_kv_heads", None)}
    total = 0.0
    for name, p in cell.parameters_and_names():
        kind, _, unit = plan.get(name.split(".")[0], "replicated").partition(":")
        if kind in ("colwise", "colwise_local", "rowwise", "param"):
            total += p.size / (tp if unit == "rows" else min(tp, counts[unit]))
        else:
            total += p.size
    return total


def parallelize(models, dims: ParallelDims, rank: int, world: int) -> Layout:
    """Shards ``models`` (CausalLMs sharing cells, e.g. [teacher, student]) for ``rank``; returns the Layout."""
    cfg = models[0].config
    dims.validate(cfg, world)
    layout = Layout(dims, rank, world)
    layout.layers = dims.stage_layers(cfg.num_hidden_layers, layout.coords["pp"])
    s = _Sharder(layout, cfg)
    for model in models:
        if dims.pp > 1:
            s.stage(model)
        if dims.tp > 1:
            s.vocab(model)
        s.tied_pair(model)
        for i in layout.layers:
            layer = model.model.layers[i]
            if dims.tp > 1:
                s.module(layer.self_attn)
            if isinstance(layer.mlp, SparseMoE):
                s.moe(layer)
            elif dims.tp > 1:
                s.module(layer.mlp)
    return layout
