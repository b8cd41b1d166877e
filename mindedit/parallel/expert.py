"""Expert parallelism for the sparse MoE block: each rank of an EP group holds num_experts / ep whole experts.

Portable dispatch (only AllGather and AllReduce, which both backends have):
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
from mindedit.parallel.comm import GatherForPartial, GatherFromGroup, Group, SplitToGroup, _GroupCell


class ReduceToSlice(_GroupCell):
    """forward: sum over the group, then this rank's slice along dim 0; backward: zero-padded all-reduce."""

    def construct(self, x):
        return self._slice(self._reduce(x))

    def bprop(self, x, out, dout):
        return (self._gather(dout),)


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
        for e in self.local:
            out = out + ws[:, e:e + 1] * self.experts[e](xs)
        return self.unsplit(self.combine(out)).reshape(b, t, h)
