"""Communication for explicit SPMD: process groups, and cells whose backward is written out (Megatron semantics).

Only collectives that exist on both backends are used. On CPU (mccl) only AllReduce SUM works inside a created
group (AllGather and Broadcast refuse anything but the world group; measured, docs/environment.md), so a gather
there is an all-reduce of zero-padded pieces; on Ascend it is AllGather. A group of one rank makes every cell
here an identity, so a single-process run takes the same code path with no communication.

    CopyToGroup      f: identity forward, all-reduce backward (before a column-parallel matmul)
    ReduceFromGroup  g: all-reduce forward, identity backward (after a row-parallel matmul, a vocab-parallel sum)
    SplitToGroup     forward: this rank's slice along dim 0; backward: all-gather of the slices (zero-pad + sum)
    SumOverGroup     all-reduce forward and backward: a sum whose consumers differ per rank (each rank's
                     log-softmax normaliser is used by its own vocab slice, so its gradient is partial)
    GatherFromGroup  forward: all-gather along dim 0; backward: this rank's slice (consumers are replicated)
    GatherForPartial forward: all-gather along dim 0; backward: all-reduce, then this rank's slice (each rank
                     computes a different partial result on the gathered tensor, e.g. its own experts)
"""
from dataclasses import dataclass

import mindspore as ms
from mindspore import mint, nn, ops


@dataclass(frozen=True)
class Group:
    """A communication group: its backend name, member ranks (global) and this rank's index in it."""
    name: str
    ranks: tuple
    index: int

    @property
    def size(self) -> int:
        return len(self.ranks)


SINGLE = Group("", (0,), 0)
_created = {}


def init_distributed() -> tuple:
    """(rank, world size) after mindspore.communication.init() (mccl on CPU, HCCL on Ascend)."""
    from mindspore.communication import get_group_size, get_rank, init
    init()
    return get_rank(), get_group_size()


def group(ranks, rank: int) -> Group:
    """The group of ``ranks`` seen from ``rank`` (a member), created in the backend on first use. Every member
    must ask for it (in any order relative to other groups it is not in); a one-rank group needs no backend."""
    ranks = tuple(sorted(ranks))
    if rank not in ranks:
        raise ValueError(f"rank {rank} is not in group {ranks}")
    if len(ranks) == 1:
        return Group("", ranks, 0)
    name = "g_" + "_".join(map(str, ranks))
    if name not in _created:
        from mindspore.communication import create_group
        create_group(name, list(ranks))
        _created[name] = True
    return Group(name, ranks, ranks.index(rank))


def world_group(rank: int, world: int) -> Group:
    if world == 1:
        return SINGLE
    from mindspore.communication import GlobalComm
    return Group(GlobalComm.WORLD_COMM_GROUP, tuple(range(world)), rank)


class _GroupCell(nn.Cell):
    def __init__(self, grp: Group):
        super().__init__()
        self.size, self.index = grp.size, grp.index
        self.padded_gather = ms.get_context("device_target") == "CPU"
        if grp.size > 1:
            self.all_reduce = ops.AllReduce(group=grp.name)
            if not self.padded_gather:
                self.all_gather = ops.AllGather(group=grp.name)

    def _reduce(self, x):
        return self.all_reduce(x) if self.size > 1 else x

    def _gather(self, x):
        """Concatenation along dim 0 of every member's x (same shape everywhere)."""
        if self.size == 1:
            return x
        if not self.padded_gather:
            return self.all_gather(x)
        return self.all_reduce(self._pad(x))

    def _pad(self, x):
        """x at this rank's position in a zero tensor of ``size`` times its rows."""
        rows, rest = x.shape[0], x.shape[1:]
        parts = (x,)
        if self.index > 0:
            parts = (ops.zeros((self.index * rows,) + rest, x.dtype),) + parts
        if self.index < self.size - 1:
            parts = parts + (ops.zeros(((self.size - 1 - self.index) * rows,) + rest, x.dtype),)
        return mint.cat(parts, dim=0)

    def _slice(self, x):
        n = x.shape[0] // self.size
        return x[self.index * n:(self.index + 1) * n]


class CopyToGroup(_GroupCell):
    def construct(self, x):
        return x

    def bprop(self, x, out, dout):
        return (self._reduce(dout),)


class ReduceFromGroup(_GroupCell):
    def construct(self, x):
        return self._reduce(x)

    def bprop(self, x, out, dout):
        return (dout,)


class SumOverGroup(_GroupCell):
    def construct(self, x):
        return self._reduce(x)

    def bprop(self, x, out, dout):
        return (self._reduce(dout),)


class SplitToGroup(_GroupCell):
    def construct(self, x):
        return self._slice(x)

    def bprop(self, x, out, dout):
        return (self._gather(dout),)


class GatherFromGroup(_GroupCell):
    def construct(self, x):
        return self._gather(x)

    def bprop(self, x, out, dout):
        return (self._slice(dout),)


class GatherForPartial(_GroupCell):
    def construct(self, x):
        return self._gather(x)

    def bprop(self, x, out, dout):
        return (self._slice(self._reduce(dout)),)


class GroupMax(_GroupCell):
    """Element-wise max over the group (no gradient: used to stabilise a logsumexp), via all-gather because CPU
    AllReduce has no MAX."""

    def construct(self, x):
        x = ops.stop_gradient(x)
        if self.size == 1:
            return x
        return self._gather(x.unsqueeze(0)).max(axis=0)


def all_reduce(value, grp: Group):
    return ops.AllReduce(group=grp.name)(value) if grp.size > 1 else value

