"""Fused attention for mindedit: one cell, four faces.

``FusedAttention(scale, window, sink_tokens)`` is what model code holds and calls as ``attn(q, k, v, sink)``.
Contract (every face implements exactly this):

    q [B, H, Tq, D], k [B, Hk, Tk, D], v [B, Hk, Tk, Dv], H % Hk == 0 (GQA: head h reads kv head h // (H // Hk)).
    Query row i sits at absolute position p = Tk - Tq + i; keys are positions 0..Tk-1 (a decode step with a cache
    is Tq = 1 against the whole cache). Key j is visible to p iff j <= p and (window == 0 or p - j < window or
    j < sink_tokens). ``sink`` [H], when given, is a learnable per-head logit: an extra softmax column whose value
    is zero (it absorbs probability mass). ``kv_len`` (int32 tensor [1], optional) says how many of the stored
    keys are valid, for fixed-capacity caches under graph mode: then Tk = kv_len and later slots are ignored.
    Returns o [B, H, Tq, Dv] in q's dtype; computed in float32. ``FusedAttention(..., latent=Dv)`` (MLA absorbed:
    one KV head) takes v None: the values are the keys' first Dv channels.

Faces:
- ``reference``: plain MindSpore ops, materialises the scores; the oracle in tests.
- ``cpu`` (the CPU default): a blockwise online-softmax C++ kernel through ``ops.Custom`` AOT that does windows,
  sink tokens and the sink logit in one pass, with a backward; memory O(T) per head. Few query rows per kv head
  (decoding) take a split-K path: chunks of keys read once from the cache, their partial softmaxes merged.
- ``ascend`` (the 910B default): ascend_ops.split over CANN's fused operators (ascend_ops.ascend): the causal
  attention or its band in one FlashAttentionScore call (FusedInferAttentionScore when decoding), the sink tokens
  and the sink logit merged by softmax statistics. Not run here (no NPU or CANN): docs/ascend.md.
- ``split``: the very same decomposition with the CPU kernel as its band part: the CPU twin that tests the
  ascend face's code (everything but the operator calls).
- ``triton``: the Triton-Ascend GateSWA kernel (ascend_ops.triton) in one pass, forward and backward; on the CPU
  under Triton's interpreter (slow: tests), on Ascend not built (docs/ascend.md).
Both split faces pad v to q's head size when they differ (MLA: the fused operators take one head size).

``Heads(rotary)`` is what attention modules hold around it: ``front(x, cos, sin)`` turns the projections' layout
x [B, T, H, D] into the contract's [B, H, T, D] with rotary positions (HF rotate_half layout) applied to the last
``rotary`` channels of each head (cos/sin [T, rotary]; none given: no rotation), ``back(o)`` turns o [B, H, T, D]
back into [B, T, H, D]. Faces: ``cpu`` (the CPU default): one C++ pass each way (cpu/heads.cc), its backward the
same kernel; every other face: plain ops (``heads_reference``, the oracle), which need no Ascend-only operator.

``CacheWrite()(buf, new, pos)`` writes new [B, H, T, D] into an inference cache buf [B, H, C, D] at slots
pos..pos+T-1 in place and returns buf to read through: on the CPU a C++ copy of the T slots where buf lies
(cpu/cache_write.cc); every other face ScatterNdUpdate (``cache_write_reference``, the oracle; its CPU kernel
copies the whole buffer per call).

``LatentAbsorb(nope, v)`` is MLA's weight absorption around the latent attention (decoding: forward only), from
kv_b_proj's weight w [H * (nope + v), rank] as it lies: ``query(q, w)`` folds each head's key part into its query
(q [B, H, T, nope + rope] -> [B, H, T, rank + rope], the rotary channels passed through), ``output(o, w)`` applies
the value part (o [B, H, T, rank] -> [B, H, T, v]). Faces: ``cpu``: one C++ pass each (cpu/latent_absorb.cc);
every other face: plain ops (``absorb_query_reference``, ``absorb_output_reference``: the oracles).

``RMSNormOp(eps)(x, weight)`` is y = weight * x / rms(x) over the last axis in float32 (x and weight float32):
one C++ pass forward and one backward on the CPU (cpu/rms_norm.cc); ``None`` from ``RMSNormOp.for_face`` on every
other face, where mindedit.layers.RMSNorm computes it in plain ops (the oracle).

The face is chosen when the cell is built, from the device target; ``MINDEDIT_ATTENTION=reference|cpu|split``
forces one (tests, benchmarks; ``triton`` only this way). Every face is graph-mode (``ms.jit``) compatible.

The CPU kernels are OpenMP loops. GNU OpenMP's threads spin after each parallel region by default, on the very
cores MindSpore's own thread pool needs for the next op, and MindSpore sets ``OMP_NUM_THREADS`` (cores / 8, here
1) in its process's environment when unset, which every child process (a job's stages, msrun's ranks) then
inherits. So importing this package first sets ``OMP_WAIT_POLICY=PASSIVE`` and ``OMP_NUM_THREADS`` = the cores,
each unless the environment says otherwise (docs/environment.md: a SmolLM2 stage-1 step 3.6 -> 2.2 s, a decode
step at 2K 280-470 -> 200 ms). libgomp reads them once, when ``import mindspore`` loads it.
"""
import os
import sys
import warnings

if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    if "mindspore" in sys.modules:
        warnings.warn("ascend_ops was imported after mindspore: its CPU kernels' OpenMP threads will spin against "
                      "MindSpore's (slower steps); import mindedit/ascend_ops first or set OMP_WAIT_POLICY=PASSIVE")

import mindspore as ms  # noqa: E402 (after the wait policy)
from mindspore import mint, nn, ops  # noqa: E402

from .moe import GroupedMatmul, TokenPermute  # noqa: E402
from .reference import (absorb_output_reference, absorb_query_reference, attention_reference,  # noqa: E402
                        cache_write_reference, heads_reference)

__all__ = ["CacheWrite", "FusedAttention", "GroupedMatmul", "Heads", "LatentAbsorb", "RMSNormOp", "TokenPermute",
           "attention_reference", "backend", "cache_write_reference", "heads_reference"]
FACES = ("reference", "cpu", "split", "ascend", "triton")


def backend() -> str:
    forced = os.environ.get("MINDEDIT_ATTENTION")
    if forced:
        if forced not in FACES:
            raise ValueError(f"MINDEDIT_ATTENTION={forced!r}: expected one of {FACES}")
        return forced
    return "cpu" if ms.get_context("device_target") == "CPU" else "ascend"


class Heads(nn.Cell):
    def __init__(self, rotary: int = 0, face=None):
        super().__init__()
        self.kernel = (face or backend()) == "cpu"
        if self.kernel:
            from .cpu_kernel import heads_op
            self.op = heads_op()
            self.meta_front = ms.Tensor([1, rotary, 0], ms.int32)
            self.meta_plain = ms.Tensor([1, 0, 0], ms.int32)
            self.meta_back = ms.Tensor([2, 0, 0], ms.int32)
            self.no_angles = ms.Tensor([[0.0]], ms.float32)

    def __deepcopy__(self, memo):
        return self  # stateless (as GroupedMatmul): a deep-copied attention shares it; its primitives cannot be copied

    def front(self, x, cos=None, sin=None):
        if not self.kernel:
            return heads_reference(x, cos, sin)
        f32 = ms.float32
        if cos is None:
            return self.op(x.astype(f32), self.no_angles, self.no_angles, self.meta_plain).astype(x.dtype)
        return self.op(x.astype(f32), cos.astype(f32), sin.astype(f32), self.meta_front).astype(x.dtype)

    def back(self, o):
        if not self.kernel:
            return mint.permute(o, (0, 2, 1, 3))
        return self.op(o.astype(ms.float32), self.no_angles, self.no_angles, self.meta_back).astype(o.dtype)


class CacheWrite(nn.Cell):
    def __init__(self, face=None):
        super().__init__()
        self.kernel = (face or backend()) == "cpu"
        if self.kernel:
            from .cpu_kernel import cache_write_op
            self.op = cache_write_op()

    def __deepcopy__(self, memo):
        return self  # stateless (as Heads): a deep-copied attention shares it; its primitive cannot be copied

    def construct(self, buf, new, pos):
        if not self.kernel or buf.dtype != ms.float32:
            return cache_write_reference(buf, new, pos)
        return ops.depend(buf, self.op(buf, new.astype(ms.float32), pos.astype(ms.int32)))


class LatentAbsorb(nn.Cell):
    def __init__(self, nope: int, v: int, face=None):
        super().__init__()
        self.nope, self.v = int(nope), int(v)
        self.kernel = (face or backend()) == "cpu"
        if self.kernel:
            from .cpu_kernel import latent_absorb_ops
            self.query_op, self.output_op = latent_absorb_ops(self.nope, self.v)
            self.meta = ms.Tensor([self.nope, self.v], ms.int32)

    def __deepcopy__(self, memo):
        return self  # stateless (as Heads): a deep-copied attention shares it; its primitives cannot be copied

    def query(self, q, w):
        if not self.kernel:
            return absorb_query_reference(q, w, self.nope, self.v)
        return self.query_op(q.astype(ms.float32), w.astype(ms.float32), self.meta).astype(q.dtype)

    def output(self, o, w):
        if not self.kernel:
            return absorb_output_reference(o, w, self.nope, self.v)
        return self.output_op(o.astype(ms.float32), w.astype(ms.float32), self.meta).astype(o.dtype)


class RMSNormOp(nn.Cell):
    def __init__(self, eps: float):
        super().__init__()
        from .cpu_kernel import rms_norm_op
        self.op = rms_norm_op()
        self.eps = ms.Tensor([eps], ms.float32)

    @classmethod
    def for_face(cls, eps: float, face=None):
        return cls(eps) if (face or backend()) == "cpu" else None

    def __deepcopy__(self, memo):
        return self  # stateless (as GroupedMatmul): a deep-copied norm shares it; its primitive cannot be copied

    def construct(self, x, weight):
        return self.op(x, weight, self.eps)[0]


class FusedAttention(nn.Cell):
    def __init__(self, scale: float, window: int = 0, sink_tokens: int = 0, use_sink: bool = False, face=None,
                 latent: int = 0):
        """``latent`` > 0 (MLA absorbed): one KV head whose first ``latent`` channels are also the values; call it
        with v None. The cpu face reads them in place, triton uses its latent decode kernel for Tq = 1, the other
        faces slice them off."""
        super().__init__()
        self.scale, self.window, self.sink_tokens = float(scale), int(window), int(sink_tokens)
        self.latent = int(latent)
        self.face = face or backend()
        if self.face == "cpu":
            from .cpu_kernel import flash_attention_latent_op, flash_attention_op, kernel_constants
            self.op = flash_attention_latent_op(self.latent) if self.latent else flash_attention_op()
            self.meta, self.scale_t = kernel_constants(self.scale, self.window, self.sink_tokens, use_sink)
        elif self.face in ("split", "ascend"):
            from .split import CPUBand, SplitAttention
            if self.face == "split":
                band = CPUBand(self.scale, self.window)
            else:
                from .ascend import AscendBand
                band = AscendBand(self.scale, self.window)
            self.split = SplitAttention(band, self.scale, self.window, self.sink_tokens, use_sink)
        elif self.face == "triton":
            from .triton.face import triton_attention_op
            self.op = triton_attention_op(self.scale, self.window, self.sink_tokens, bool(use_sink), bool(latent))

    def construct(self, q, k, v, sink=None, kv_len=None):
        f32 = ms.float32
        s = ops.zeros((q.shape[1],), f32) if sink is None else sink.astype(f32)
        n = ops.full((1,), k.shape[2], dtype=ms.int32) if kv_len is None else kv_len.astype(ms.int32)
        if self.latent and self.face != "cpu":
            v = k[..., :self.latent]
        if self.face == "cpu":
            if self.latent:
                o, _ = self.op(q.astype(f32), k.astype(f32), s, self.meta, self.scale_t, n)
            else:
                o, _ = self.op(q.astype(f32), k.astype(f32), v.astype(f32), s, self.meta, self.scale_t, n)
        elif self.face == "triton":
            o, _ = self.op(q.astype(f32), k.astype(f32), v.astype(f32), s, n)
        elif self.face in ("split", "ascend"):
            dv, d = v.shape[3], q.shape[3]
            if dv != d:  # one head size for q, k and v (FlashAttentionScore); the padding's output is sliced off
                v = mint.cat([v, ops.zeros(v.shape[:3] + (d - dv,), v.dtype)], dim=-1)
            o, _ = self.split(q.astype(f32), k.astype(f32), v.astype(f32), s, n)
            o = o[..., :dv]
        else:
            o, _ = attention_reference(q.astype(f32), k.astype(f32), v.astype(f32),
                                       None if sink is None else sink.astype(f32),
                                       self.scale, self.window, self.sink_tokens, kv_len)
        return o.astype(q.dtype)
