"""Grouped matmul for the sparse MoE: rows sorted by expert, each expert's weight applied to its own rows.

``GroupedMatmul()(x [N, In], w [E, Out, In], offsets [E+1] int32) -> y [N, Out]``, y[r] = w[e] @ x[r] for the rows
offsets[e] .. offsets[e+1]-1 (the experts' weights in HF layout, a Linear's [out, in]); differentiable in x and w.
Faces, chosen when the cell is built:
- ``cpu``: cpu/grouped_matmul.cc through ops.Custom AOT, forward and backward (ascend_ops.cpu_kernel);
- ``ascend``: CANN's GroupedMatmul (split_item=3, group_type=0: one 2-D x, one 3-D weight, group_list the
  cumulative row counts; the only configuration its documentation gives a derivative for). NOT RUN HERE:
  docs/ascend.md;
- ``reference``: every expert on every row, masked to its own rows: the oracle in tests.
"""
import mindspore as ms
from mindspore import mint, nn, ops


def grouped_matmul_reference(x, w, offsets):
    rows = ops.arange(0, x.shape[0]).reshape(-1, 1)
    y = ops.zeros((x.shape[0], w.shape[1]), ms.float32)
    for e in range(w.shape[0]):
        mine = mint.logical_and(rows >= offsets[e], rows < offsets[e + 1]).astype(ms.float32)
        y = y + mine * mint.matmul(x.astype(ms.float32), w[e].astype(ms.float32).T)
    return y


class GroupedMatmul(nn.Cell):
    def __init__(self, face=None):
        super().__init__()
        self.face = face or ("cpu" if ms.get_context("device_target") == "CPU" else "ascend")
        if self.face == "cpu":
            from .cpu_kernel import grouped_matmul_op
            self.op = grouped_matmul_op()
        elif self.face == "ascend":
            from mindspore.ops.auto_generate import GroupedMatmul as CannGroupedMatmul
            self.op = CannGroupedMatmul(split_item=3, group_type=0, transpose_b=True)

    def __deepcopy__(self, memo):
        """Stateless (no parameters): a deep copy of a model that holds it (a student's own MLPs) shares it; its
        primitive cannot be deep-copied."""
        return self

    def construct(self, x, w, offsets):
        if self.face == "cpu":
            return self.op(x.astype(ms.float32), w.astype(ms.float32), offsets).astype(x.dtype)
        if self.face == "ascend":
            ends = offsets[1:].astype(ms.int64)
            return self.op([x], [w], None, None, None, None, None, ends)[0]
        return grouped_matmul_reference(x, w, offsets).astype(x.dtype)
