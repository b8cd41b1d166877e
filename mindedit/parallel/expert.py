"""Expert parallelism for the sparse MoE block: each rank of an EP group holds num_experts / ep whole experts.

Tensor parallelism without EP (TensorParallelMoE): the sparse dispatch on each rank's slices of every expert.

EP dispatch by all-gather (only AllGather and AllReduce, which both backends have; Megatron-LM calls this
token dispatcher "allgather"):
    1. route on the full token set (the router is replicated and cheap), so its gradient needs no extra sum;
    2. split the tokens over the TP group (TP ranks hold the same tokens; after the split every rank of the EP
       group holds different ones, so no expert sees a token twice);
    3. all-gather tokens, their top-k weights and expert ids over the EP group; number the experts from this
       rank's first, so that the sort by expert puts the rows of the local experts first, and run the sparse
       dispatch on them: each local expert on the rows that chose it, the other ranks' rows zero (top_k rows per
       token in all, as with ep = 1);
    4. sum the partial outputs over the EP group and keep this rank's tokens; all-gather over TP again.
An AlltoAll dispatch would move only the rows a rank's experts chose (the gathered copy of every token is the
price paid here); the CPU backend has no AlltoAll, so it is not built (docs/parallel.md).
"""
import mindspore as ms
from mindspore import mint, nn, ops

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
        new.gate, new.gmm, new.permute = moe.gate, moe.gmm, moe.permute
        # keep the full list so that parameter paths stay experts.<global index>; other ranks' experts are empty
        new.experts = nn.CellList([moe.experts[e] if e in local else nn.Cell() for e in range(moe.num_experts)])
        if tuple(local) != tuple(range(local[0], local[0] + len(local))):
            raise ValueError(f"ExpertParallelMoE: local experts {local} must be consecutive")
        new.local = tuple(local)  # (b * t must divide by tp: checked by parallelize's caller)
        new.split, new.unsplit = SplitToGroup(tp), GatherFromGroup(tp)
        new.gather, new.combine = GatherForPartial(ep), ReduceToSlice(ep)
        return new

    def expert_weights(self, name):
        return ops.stack([getattr(self.experts[e], name).weight for e in self.local])

    def construct(self, x):
        b, t, h = x.shape
        top, idx = self.route(x.reshape(b * t, h))
        xs = self.gather(self.split(x.reshape(b * t, h)))
        ws = self.gather(self.split(top))
        # expert ids (as float32, exact below 2^24, through the same gather) counted from this rank's first expert:
        # its own are 0 .. local - 1, so their rows sort first
        ids = ops.stop_gradient(self.gather(self.split(idx.astype(ms.float32)))).astype(ms.int32) - self.local[0]
        ids = mint.where(ids < 0, ids + self.num_experts, ids)
        out = self.dispatch(xs, ws, ids, len(self.local))
        return self.unsplit(self.combine(out)).reshape(b, t, h)
