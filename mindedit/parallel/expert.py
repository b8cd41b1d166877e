"""Expert parallelism for the sparse MoE block: each rank of an EP group holds num_experts / ep whole experts.

Tensor parallelism without EP (TensorParallelMoE): the sparse dispatch on each rank's slices of every expert.

Portable EP dispatch (only AllGather and AllReduce, which both backends have):
    1. route on the full token set (the router is replicated and cheap), so its gradient needs no extra sum;
    2. split the tokens over the TP group (TP ranks hold the same tokens; after the split every rank of the EP
       group holds different ones, so no expert sees a token twice);
    3. all-gather tokens and routing weights over the EP group, run the local experts on all of them;
    4. sum the partial outputs over the EP group and keep this rank's tokens; all-gather over TP again.
An AlltoAll dispatch (tokens sent only to the experts that chose them) is the Ascend fast path; it does not exist
on the CPU backend, so it is not built here (docs/parallel.md).
"""
from mindspore import nn, ops

from mindedit.models.qwen3 import SparseMoE
from mindedit.parallel.comm import CopyToGroup, GatherForPartial, GatherFromGroup, Group, ReduceFromGroup, \
    SplitToGroup, _GroupCell


class ReduceToSlice(_GroupCell):
    """forward: sum over the group, then this rank's slice along dim 0; backward: zero-padded all-reduce."""

    def construct(self, x):
        return self._slice(self._reduce(x))

    def bprop(self, x, out, dout):
        return (self._gather(dout),)


class TensorParallelMoE(SparseMoE):
    """ep = 1, tp > 1: every rank holds every expert, each sharded by the MLP's TP plan (gate/up rows, down
    columns); the sparse dispatch runs on this rank's slices, with f on the rows going in and g on the partial
    outputs (before the router weights mix them, so the router's gradient is whole on every rank)."""

    @classmethod
    def shard(cls, moe: SparseMoE, tp: Group):
        new = cls.__new__(cls)
        nn.Cell.__init__(new)
        new.num_experts, new.top_k, new.norm_topk_prob = moe.num_experts, moe.top_k, moe.norm_topk_prob
        new.gate, new.experts, new.gmm, new.permute = moe.gate, moe.experts, moe.gmm, moe.permute
        new.copy, new.reduce = CopyToGroup(tp), ReduceFromGroup(tp)
        return new

    def experts_on_rows(self, rows, offsets):
        return self.reduce(super().experts_on_rows(self.copy(rows), offsets))


class ExpertParallelMoE(SparseMoE):
    @classmethod
    def shard(cls, moe: SparseMoE, local: tuple, tp: Group, ep: Group):
        new = cls.__new__(cls)
        nn.Cell.__init__(new)
        new.num_experts, new.top_k, new.norm_topk_prob = moe.num_experts, moe.top_k, moe.norm_topk_prob
        new.gate = moe.gate
        # keep the full list so that parameter paths stay experts.<global index>; other ranks' experts are empty
        new.experts = nn.CellList([moe.experts[e] if e in local else nn.Cell() for e in range(moe.num_experts)])
        new.local = tuple(local)  # (b * t must divide by tp: checked by parallelize's caller)
        new.split, new.unsplit = SplitToGroup(tp), GatherFromGroup(tp)
        new.gather, new.combine = GatherForPartial(ep), ReduceToSlice(ep)
        return new

    def construct(self, x):
        b, t, h = x.shape
        weights = self.routing_weights(x).reshape(b * t, self.num_experts)
        xs = self.gather(self.split(x.reshape(b * t, h)))
        ws = self.gather(self.split(weights))
        out = ops.zeros_like(xs)
        for e in self.local:  # the local experts on every gathered token (zero weights for the unchosen)
            out = out + ws[:, e:e + 1] * self.experts[e](xs)
        return self.unsplit(self.combine(out)).reshape(b, t, h)
