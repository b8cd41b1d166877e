"""Tensor-parallel layers (Megatron): column/row-parallel linears, a vocab-parallel embedding, and the vocab
reductions a distillation loss needs without ever gathering logits on one rank.

Each layer subclasses the cell it replaces, so parameter paths stay the HF names (``q_proj.weight`` holds this
rank's rows of the full ``q_proj.weight``) and the model code calling it does not change.
"""
import mindspore as ms
from mindspore import mint, nn, ops

from mindedit.layers import Embedding, Linear, RMSNorm, expand
from mindedit.parallel.comm import CopyToGroup, Group, GroupMax, ReduceFromGroup, SINGLE, SumOverGroup


def _np(p):
    return p.value().astype(ms.float32).asnumpy()


def _local_linear(cls, linear, weight, bias):
    """A new ``cls`` holding numpy ``weight`` [out, in] (and ``bias``), in the dtype of ``linear``."""
    out_features, in_features = weight.shape
    dtype = linear.weight.dtype
    new = cls(in_features, out_features, bias is not None, dtype)
    new.weight.set_data(ms.Tensor(weight).astype(dtype))
    if bias is not None:
        new.bias.set_data(ms.Tensor(bias).astype(dtype))
    new.weight.requires_grad = linear.weight.requires_grad
    return new


class ColumnParallelLinear(Linear):
    """Holds rows ``rows`` of the full weight (output features); input replicated, output split."""

    @classmethod
    def shard(cls, linear, rows, grp: Group):
        w = _np(linear.weight)[rows]
        b = _np(linear.bias)[rows] if linear.bias is not None else None
        new = _local_linear(cls, linear, w, b)
        new.copy = CopyToGroup(grp)
        return new

    def construct(self, x):
        return super().construct(self.copy(x))


class RowParallelLinear(Linear):
    """Holds columns ``cols`` of the full weight (input features); input split, output summed over the group.
    The bias (if any) is added once, after the sum."""

    @classmethod
    def shard(cls, linear, cols, grp: Group):
        w = _np(linear.weight)[:, cols]
        new = _local_linear(cls, linear, w, _np(linear.bias) if linear.bias is not None else None)
        new.reduce = ReduceFromGroup(grp)
        return new

    def construct(self, x):
        return self.output(self.reduce(self.matmul(x.reshape(-1, x.shape[-1]), self.weight)), x.shape)


class VocabParallelEmbedding(Embedding):
    """Rows [start, start + n) of the embedding table; other ids give zeros, summed over the group."""

    @classmethod
    def shard(cls, emb, start: int, n: int, grp: Group):
        new = cls(n, emb.weight.shape[1], emb.weight.dtype)
        new.weight.set_data(ms.Tensor(_np(emb.weight)[start:start + n]).astype(emb.weight.dtype))
        new.weight.requires_grad = emb.weight.requires_grad
        new.start, new.n, new.reduce = start, n, ReduceFromGroup(grp)
        return new

    def construct(self, ids):
        local = ids - self.start
        inside = mint.logical_and(local >= 0, local < self.n)
        x = ops.gather(self.weight, mint.clamp(local, 0, self.n - 1), 0)
        return self.reduce(x * inside.unsqueeze(-1).astype(x.dtype))


class NormToVocab(RMSNorm):
    """The final norm followed by f (identity forward, all-reduce backward): the hidden state enters the
    vocab-parallel head, whose ranks each hold a slice of the vocabulary."""

    @classmethod
    def wrap(cls, norm, grp: Group):
        new = cls(norm.weight.shape[0], norm.eps, norm.weight.dtype)
        new.weight = norm.weight  # the same Parameter (shared with the teacher unless the student owns it)
        new.copy = CopyToGroup(grp)
        return new

    def construct(self, x):
        return self.copy(super().construct(x))


class Vocab(nn.Cell):
    """Reductions over the vocabulary axis of logits that may be split over a group: [start, start + n) here.
    With the single-rank group these are the plain operations."""

    def __init__(self, start: int = 0, n: int = 0, grp: Group = SINGLE):
        super().__init__()
        self.start, self.n = start, n
        self.reduce, self.max, self.normaliser = ReduceFromGroup(grp), GroupMax(grp), SumOverGroup(grp)

    def sum(self, x):
        """x [..., V_local] -> [...]: the sum over the whole vocabulary."""
        return self.reduce(x.sum(-1))

    def log_softmax(self, logits):
        """Over the last axis; the per-row max and normaliser are expanded to the logits' shape (a CPU graph keeps
        the buffers of implicitly broadcasting ops)."""
        z = logits - expand(self.max(logits.max(axis=-1, keepdims=True)), logits)
        return z - expand(ops.log(self.normaliser(mint.exp(z).sum(-1, keepdim=True))), z)

    def local(self, ids, n: int):
        """(ids as indices into this rank's n vocabulary rows, clamped; 1.0 where the id is one of them, else 0.0)"""
        local = ids - self.start
        return mint.clamp(local, 0, n - 1), mint.logical_and(local >= 0, local < n).astype(ms.float32)

    def pick(self, logp, ids):
        """logp [B, T, V_local], ids [B, T] -> logp at each id [B, T] (from the rank that holds it)."""
        if self.n == 0:
            return mint.gather(logp, -1, ids.unsqueeze(-1)).squeeze(-1)
        index, inside = self.local(ids, self.n)
        got = mint.gather(logp, -1, index.unsqueeze(-1)).squeeze(-1)
        return self.reduce(got * inside.astype(logp.dtype))

    def one_hot(self, ids, n: int):
        """ids [R] -> [R, n] float32: 1 at each id among this rank's n vocabulary rows, 0 elsewhere."""
        index, inside = self.local(ids, n)
        hot = mint.nn.functional.one_hot(index.astype(ms.int64), n).astype(ms.float32)
        return hot * expand(inside.reshape(-1, 1), hot)
