"""The sparse MoE's device pieces: the token permutation by expert (TokenPermute) and the grouped matmul
(GroupedMatmul), rows sorted by expert, each expert's weight applied to its own rows.

``TokenPermute().permute(x [T, H], idx [T, k] int32) -> (rows [T*k, H], back [T*k] int32)``: the (token, choice)
pairs sorted by expert, ties by their flat index t * k + c (so the order is deterministic); back[t * k + c] is
the row that pair went to. ``TokenPermute().unpermute(rows, back, weights [T, k]) -> [T, H]``:
out[t] = sum_c weights[t, c] rows[back[t * k + c]]. Faces: plain ops (sort, the inverse permutation by a second
sort, gathers) on every device but Ascend; ``ascend``: CANN's MoeTokenPermute / MoeTokenUnpermute
(``ops.moe_token_permute(x, idx)`` returns exactly (rows, back) in this order; ``ops.moe_token_unpermute(rows,
back, weights)`` the weighted sum; both with gradients). NOT RUN HERE: docs/ascend.md.

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


def default_face() -> str:
    return "cpu" if ms.get_context("device_target") == "CPU" else "ascend"


class TokenPermute(nn.Cell):
    def __init__(self, face=None):
        super().__init__()
        self.face = face or default_face()

    def __deepcopy__(self, memo):
        return self  # stateless, like GroupedMatmul

    def permute(self, x, idx):
        if self.face == "ascend":
            rows, back = ops.moe_token_permute(x, idx)
            return rows, back.astype(ms.int32)
        n = idx.shape[0] * idx.shape[1]
        flat = idx.reshape(n)
        _, order = ops.sort(flat * n + ops.arange(0, n, dtype=ms.int32))  # by expert, then by flat index
        _, back = ops.sort(order)                                          # the inverse permutation
        token = (order.astype(ms.float32) / idx.shape[1]).floor().astype(ms.int32)  # (no int FloorDiv on CPU)
        return ops.gather(x, token, 0), back

    def unpermute(self, rows, back, weights):
        if self.face == "ascend":
            return ops.moe_token_unpermute(rows, back, weights.astype(rows.dtype))
        y = ops.gather(rows, back, 0).reshape(weights.shape[0], weights.shape[1], rows.shape[-1])
        return (y * weights.unsqueeze(-1).astype(y.dtype)).sum(1)


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
        self.face = face or default_face()
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
