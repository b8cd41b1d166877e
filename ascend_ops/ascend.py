"""The 910B band part of ascend_ops.split: CANN's fused attention operators as MindSpore 2.10 exposes them.

NOT RUN HERE: no NPU or CANN exists on the machines of this project. Everything around these calls (the split
into band + sink tokens + sink logit, the merge by softmax statistics, the backward with merged statistics, the
padding of v to q's head size) runs on the CPU through the same code with ascend_ops.split.CPUBand and is tested
there (tests/test_split_attention.py). The calls, their argument contracts and what only a 910B can confirm are
listed in docs/ascend.md; each method below is one call into one documented operator.
"""
import numpy as np
import mindspore as ms
from mindspore import mint, nn, ops
from mindspore.ops.auto_generate.gen_ops_prim import FlashAttentionScore, FlashAttentionScoreGrad

from .reference import visibility_mask

BF16 = ms.bfloat16
ALL = 2147483647  # "no limit" for pre_tokens / next_tokens


class AscendBand(nn.Cell):
    """(q, k, v [B, N, S, D] float32, kv_len) -> (o, lse): causal (window 0) or banded attention over the valid keys,
    computed in bf16 with fp32 softmax statistics. Training and whole-sequence prefill (Tq == Tk, every key valid)
    use the compressed causal / band masks; a chunk against a fixed-capacity cache (Tq < Tk) passes its explicit
    visibility mask; a decode step (Tq == 1) goes through FusedInferAttentionScore with the valid length."""

    def __init__(self, scale: float, window: int):
        super().__init__()
        self.scale, self.window = float(scale), int(window)
        # sparse_mode 2/3/4 read a compressed 2048 x 2048 mask: True above the diagonal (discarded)
        self.compressed = ms.Tensor(np.triu(np.ones((2048, 2048), bool), 1))

    def _sparse(self):
        """(sparse_mode, pre_tokens, next_tokens, attn_mask) for the whole-sequence case."""
        if self.window:
            return 4, self.window - 1, 0, self.compressed   # band: keys i - (window - 1) .. i
        return 3, ALL, 0, self.compressed                   # rightDownCausal

    def forward(self, q, k, v, kv_len):
        b, n, tq, _ = q.shape
        tk = k.shape[2]
        if tq == 1:
            o, lse = ops.fused_infer_attention_score(
                q.astype(BF16), k.astype(BF16), v.astype(BF16), actual_seq_lengths_kv=kv_len, num_heads=n,
                scale=self.scale, pre_tokens=(self.window - 1) if self.window else ALL, next_tokens=0,
                input_layout="BNSD", num_key_value_heads=k.shape[1], softmax_lse_flag=True)
            return o.astype(ms.float32), lse.reshape(b, n, 1)
        smax, ssum, _, o = FlashAttentionScore(n, 1.0, self.scale, *self._attrs(tq, tk))(
            q.astype(BF16), k.astype(BF16), v.astype(BF16), None, None, None, self._mask(tq, tk, kv_len))
        return o.astype(ms.float32), smax[..., 0] + mint.log(ssum[..., 0])

    def backward(self, q, k, v, kv_len, o, lse, do):
        """FlashAttentionScoreGrad with the merged statistics: softmax_max = lse, softmax_sum = 1, so that its
        probabilities exp(s - max) / sum are the merged ones (the ring-attention identity)."""
        b, n, tq, _ = q.shape
        tk = k.shape[2]
        smax = lse.unsqueeze(-1).broadcast_to((b, n, tq, 8))
        ssum = ops.ones((b, n, tq, 8), ms.float32)
        dq, dk, dv, _ = FlashAttentionScoreGrad(n, 1.0, self.scale, *self._attrs(tq, tk))(
            q.astype(BF16), k.astype(BF16), v.astype(BF16), do.astype(BF16), None, None, None,
            self._mask(tq, tk, kv_len), smax, ssum, None, o.astype(BF16))
        return dq.astype(ms.float32), dk.astype(ms.float32), dv.astype(ms.float32)

    def _attrs(self, tq: int, tk: int):
        """(pre_tokens, next_tokens, inner_precise, input_layout, sparse_mode)."""
        if tq == tk:
            mode, pre, nxt, _ = self._sparse()
            return pre, nxt, 0, "BNSD", mode
        return ALL, ALL, 0, "BNSD", 0  # explicit mask

    def _mask(self, tq: int, tk: int, kv_len):
        if tq == tk:
            return self._sparse()[3]
        return mint.logical_not(visibility_mask(tq, tk, self.window, 0, kv_len))  # True: discarded
