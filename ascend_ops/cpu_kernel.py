"""The CPU kernels behind ``ops.Custom`` AOT: the fused attention (cpu/flash_attention.cc), heads to the front and
back with rotary positions (cpu/heads.cc), RMSNorm (cpu/rms_norm.cc), the in-place cache write
(cpu/cache_write.cc), MLA's weight absorption (cpu/latent_absorb.cc) and the sparse MoE's grouped matmul
(cpu/grouped_matmul.cc).

Each shared library is compiled with the machine's g++ on first use and cached by source hash, so a fresh
machine needs nothing but g++ and OpenMP (present on every machine kind here).
"""
import functools
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import mindspore as ms
from mindspore import ops

SOURCES = Path(__file__).with_name("cpu")
CXXFLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c++17"]


def _cache_dir() -> Path:
    root = os.environ.get("MINDEDIT_CACHE") or Path(__file__).resolve().parents[1] / ".cache"
    return Path(root) / "kernels"


@functools.lru_cache(maxsize=None)
def build_library(name: str = "flash_attention") -> Path:
    """Compile cpu/<name>.cc once per version of its source, the shared headers (cpu/*.h) and the flags; the rename
    makes concurrent builders safe."""
    source = SOURCES / f"{name}.cc"
    headers = b"".join(h.read_bytes() for h in sorted(SOURCES.glob("*.h")))
    digest = hashlib.sha256(source.read_bytes() + headers + " ".join(CXXFLAGS).encode()).hexdigest()[:16]
    lib = _cache_dir() / f"{name}_{digest}.so"
    if lib.exists():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib.parent)
    os.close(fd)
    cmd = ["g++", *CXXFLAGS, str(source), "-o", tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"building the CPU kernel {name} failed: {' '.join(cmd)}\n{proc.stderr}")
    os.replace(tmp, lib)
    return lib


@functools.lru_cache(maxsize=None)
def flash_attention_backward_op():
    """(q, k, v, sink, meta, scale, kv_len, o, lse, do) -> (dq, dk, dv, dsink): the probabilities are recomputed as
    exp(scores - lse) from the given o and lse, so a part of a split attention gets its exact share of the
    gradient when it is given the merged o and lse (ascend_ops.split)."""
    def bwd_shape(q, k, v, sink, meta, scale, kv_len, o, lse, do):
        return q, k, v, sink

    return ops.Custom(f"{build_library()}:FlashAttentionBackward", out_shape=bwd_shape,
                      out_dtype=(ms.float32,) * 4, func_type="aot")


@functools.lru_cache(maxsize=None)
def flash_attention_op():
    """The forward primitive, (q, k, v, sink, meta, scale, kv_len) -> (o, lse), with the C++ backward as bprop."""
    lib = str(build_library())

    def fwd_shape(q, k, v, sink, meta, scale, kv_len):
        return (q[0], q[1], q[2], v[3]), (q[0], q[1], q[2])

    backward = flash_attention_backward_op()

    def bprop(q, k, v, sink, meta, scale, kv_len, out, dout):
        # lse is an auxiliary output for the backward pass; gradients flow through o only.
        dq, dk, dv, dsink = backward(q, k, v, sink, meta, scale, kv_len, out[0], out[1], dout[0])
        return dq, dk, dv, dsink, ops.zeros_like(meta), ops.zeros_like(scale), ops.zeros_like(kv_len)

    return ops.Custom(f"{lib}:FlashAttentionForward", out_shape=fwd_shape,
                      out_dtype=(ms.float32, ms.float32), func_type="aot", bprop=bprop)


@functools.lru_cache(maxsize=None)
def flash_attention_latent_op(dv: int):
    """MLA's absorbed attention, forward only (inference): (q, kv, sink, meta, scale, kv_len) -> (o, lse), the values
    being kv's first ``dv`` channels, read where they lie in the cache (slicing them off copied the cache's latent
    part on every decode step)."""
    def fwd_shape(q, kv, sink, meta, scale, kv_len):
        return (q[0], q[1], q[2], dv), (q[0], q[1], q[2])

    return ops.Custom(f"{build_library()}:FlashAttentionLatentForward", out_shape=fwd_shape,
                      out_dtype=(ms.float32, ms.float32), func_type="aot")


@functools.lru_cache(maxsize=None)
def heads_op():
    """(x, cos, sin, meta) -> x with axes 1 and 2 swapped and rotary applied (cpu/heads.cc for meta), with the
    kernel itself as bprop: the time axis swapped and the adjoint flag flipped."""
    lib = str(build_library("heads"))
    flip, shift = ms.Tensor(np.array([-1, 1, -1], np.int32)), ms.Tensor(np.array([3, 0, 1], np.int32))

    def out_shape(x, cos, sin, meta):
        return x[0], x[2], x[1], x[3]

    op = ops.Custom(f"{lib}:Heads", out_shape=out_shape, out_dtype=ms.float32, func_type="aot")

    def bprop(x, cos, sin, meta, out, dout):
        return op(dout, cos, sin, meta * flip + shift), ops.zeros_like(cos), ops.zeros_like(sin), ops.zeros_like(meta)

    return ops.Custom(f"{lib}:Heads", out_shape=out_shape, out_dtype=ms.float32, func_type="aot", bprop=bprop)


@functools.lru_cache(maxsize=None)
def rms_norm_op():
    """(x [..., D], weight [D], eps [1]) -> (y [..., D], r [...]: the rows' 1 / rms), with the C++ backward."""
    lib = str(build_library("rms_norm"))

    def fwd_shape(x, w, eps):
        return x, x[:-1]

    def bwd_shape(x, w, r, dy):
        return x, w

    backward = ops.Custom(f"{lib}:RmsNormBackward", out_shape=bwd_shape, out_dtype=(ms.float32, ms.float32),
                          func_type="aot")

    def bprop(x, w, eps, out, dout):
        dx, dw = backward(x, w, out[1], dout[0])
        return dx, dw, ops.zeros_like(eps)

    return ops.Custom(f"{lib}:RmsNormForward", out_shape=fwd_shape, out_dtype=(ms.float32, ms.float32),
                      func_type="aot", bprop=bprop)


@functools.lru_cache(maxsize=None)
def cache_write_op():
    """(buf [B, H, C, D], new [B, H, T, D], pos [1] int32) -> done [1] int32: new written into buf's slots
    pos..pos+T-1 in place (cpu/cache_write.cc); read buf after it (ops.depend). No gradient: caches are inference."""
    return ops.Custom(f"{build_library('cache_write')}:CacheWrite", out_shape=lambda buf, new, pos: (1,),
                      out_dtype=ms.int32, func_type="aot")


@functools.lru_cache(maxsize=None)
def latent_absorb_ops(nope: int, v: int):
    """MLA's absorption around the latent attention, forward only (decoding), kv_b_proj.weight w read in place
    (cpu/latent_absorb.cc), meta = [nope, v] int32: (query: (q [B, H, T, nope + rope], w, meta) -> [B, H, T, rank +
    rope], output: (o [B, H, T, rank], w, meta) -> [B, H, T, v])."""
    lib = str(build_library("latent_absorb"))
    query = ops.Custom(f"{lib}:AbsorbQuery", out_shape=lambda q, w, m: (q[0], q[1], q[2], w[1] + q[3] - nope),
                       out_dtype=ms.float32, func_type="aot")
    output = ops.Custom(f"{lib}:AbsorbOutput", out_shape=lambda o, w, m: (o[0], o[1], o[2], v),
                        out_dtype=ms.float32, func_type="aot")
    return query, output


def kernel_constants(scale: float, window: int, sink_tokens: int, use_sink: bool):
    """The (meta, scale) tensors the kernel reads its configuration from."""
    meta = ms.Tensor(np.array([window, sink_tokens, int(use_sink), 0], np.int32))
    return meta, ms.Tensor(np.array([scale], np.float32))


def attention_cpu(q, k, v, sink=None, scale: float = 1.0, window: int = 0, sink_tokens: int = 0, kv_len=None):
    """PyNative convenience with the reference's signature: returns (o, lse), float32."""
    meta, scale_t = kernel_constants(scale, window, sink_tokens, sink is not None)
    if sink is None:
        sink = ops.zeros((q.shape[1],), ms.float32)
    if kv_len is None:
        kv_len = ms.Tensor(np.array([k.shape[2]], np.int32))
    return flash_attention_op()(q, k, v, sink, meta, scale_t, kv_len)


@functools.lru_cache(maxsize=None)
def grouped_matmul_op():
    """(x [N, In], w [E, Out, In], offsets [E+1] int32) -> y [N, Out]: rows offsets[e]..offsets[e+1]-1 of x through
    expert e's weight, with the C++ backward (dx, dw) as bprop."""
    lib = str(build_library("grouped_matmul"))

    def fwd_shape(x, w, offsets):
        return x[0], w[1]

    def bwd_shape(x, w, offsets, dy):
        return x, w

    backward = ops.Custom(f"{lib}:GroupedMatmulBackward", out_shape=bwd_shape, out_dtype=(ms.float32, ms.float32),
                          func_type="aot")

    def bprop(x, w, offsets, out, dout):
        dx, dw = backward(x, w, offsets, dout)
        return dx, dw, ops.zeros_like(offsets)

    return ops.Custom(f"{lib}:GroupedMatmulForward", out_shape=fwd_shape, out_dtype=ms.float32, func_type="aot",
                      bprop=bprop)
