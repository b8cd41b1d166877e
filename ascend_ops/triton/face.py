"""The ``triton`` face of ascend_ops.FusedAttention: the GateSWA kernel (ascend_ops/triton/attention.py) as a
MindSpore primitive with its backward, and for MLA's absorbed decode (``latent``, one query row) the latent decode
kernel (ascend_ops/triton/mla_decode.py).

On the CPU the kernels run under Triton's interpreter inside an ``ops.Custom(func_type="pyfunc")`` pair (forward,
and the backward as its bprop): slow, but the very kernels, called by whole converted models in graph mode, which
tests that the face's wiring (layouts, the valid-key count of fixed caches, GQA, the sink logit's gradient) is the
contract's. On a 910B the same kernels would be compiled to .npubin files and registered as graph operators
through CANN's Triton route (docs/ascend.md); that route is not built (no CANN here), so the face refuses to run
on Ascend rather than pretend.
"""
import functools
import os
import sys

import mindspore as ms
import numpy as np
from mindspore import ops

from mindedit.errors import MindeditError


def _interpreter():
    """The kernels module with Triton's CPU interpreter (it must be chosen before triton is first imported)."""
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise MindeditError("MINDEDIT_ATTENTION=triton on the CPU: triton was imported (importing MindSpore does) "
                            "without TRITON_INTERPRET=1; set it before the process starts, or import mindedit first")
    os.environ["TRITON_INTERPRET"] = "1"
    from ascend_ops.triton import attention
    return attention


@functools.lru_cache(maxsize=None)
def triton_attention_op(scale: float, window: int, sink_tokens: int, use_sink: bool, latent: bool = False):
    """(q, k, v, sink, kv_len) -> (o, lse), float32, as FusedAttention's contract."""
    if ms.get_context("device_target") != "CPU":
        raise MindeditError("MINDEDIT_ATTENTION=triton on Ascend: the kernels are not compiled and registered as "
                            "graph operators here (needs CANN; docs/ascend.md 'Triton-Ascend kernels'); use the "
                            "default ascend face")
    import torch
    kernels = _interpreter()
    from ascend_ops.triton import mla_decode

    def forward(q, k, v, sink, kv_len):
        if latent and q.shape[2] == 1:  # absorbed MLA decode: every head against the shared [latent, rope key]
            dv = v.shape[3]
            t = [torch.from_numpy(np.ascontiguousarray(x)) for x in
                 (q[:, :, 0, :dv], q[:, :, 0, dv:], k[:, 0, :, :dv], k[:, 0, :, dv:])]
            o, lse = mla_decode.decode(*t, scale, int(kv_len[0]))
            return o.numpy()[:, :, None], lse.numpy()[:, :, None]
        o, lse = kernels.forward(*(torch.from_numpy(x) for x in (q, k, v)),
                                 torch.from_numpy(sink) if use_sink else None, scale, window, sink_tokens,
                                 int(kv_len[0]))
        return o.numpy(), lse.numpy()

    def backward(q, k, v, sink, kv_len, o, lse, do):
        dq, dk, dv, dsink = kernels.backward(*(torch.from_numpy(x) for x in (q, k, v)),
                                             torch.from_numpy(sink) if use_sink else None,
                                             *(torch.from_numpy(x) for x in (o, lse, do)), scale, window,
                                             sink_tokens, int(kv_len[0]))
        return dq.numpy(), dk.numpy(), dv.numpy(), (dsink.numpy() if use_sink else 0 * sink)

    grad = ops.Custom(backward, out_shape=lambda q, k, v, sink, kv_len, o, lse, do: (q, k, v, sink),
                      out_dtype=(ms.float32,) * 4, func_type="pyfunc")

    def bprop(q, k, v, sink, kv_len, out, dout):
        dq, dk, dv, dsink = grad(q, k, v, sink, kv_len, out[0], out[1], dout[0])
        return dq, dk, dv, dsink, ops.zeros_like(kv_len)

    return ops.Custom(forward, out_shape=lambda q, k, v, sink, kv_len: ((q[0], q[1], q[2], v[3]), (q[0], q[1], q[2])),
                      out_dtype=(ms.float32, ms.float32), func_type="pyfunc", bprop=bprop)
