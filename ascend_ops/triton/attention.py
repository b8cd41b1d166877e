"""GateSWA attention as one Triton-Ascend kernel per pass: the sliding band, the sink tokens and the learnable sink
logit in a single online softmax (forward), and the FlashAttention-2 backward over the same visibility.

The contract is ascend_ops.FusedAttention's (q [B, H, Tq, D], k [B, Hk, Tk, D], v [B, Hk, Tk, Dv]; query row i at
absolute position n_keys - Tq + i; key j visible iff j <= p and (window == 0 or p - j < window or j < sink_tokens);
the sink logit an extra softmax column with no value), on torch tensors, contiguous. Where the CANN split needs
three pieces merged by their statistics (ascend_ops.split), this kernel walks two key ranges of one softmax: the
first ``sink_tokens`` keys the band leaves out (one small block), then the band's blocks; the sink logit starts the
online softmax (running max = the logit, running sum = 1), so it costs nothing per key.

Backward: delta = rowsum(dO o) and the merged lse make each key block's share exact (P = exp(S - lse),
dS = P (dP - delta)): ``_dkdv`` walks, for each key block, the query blocks that see it (every later one for a block
holding sink tokens, the window's span otherwise); ``_dq`` walks the forward's key ranges. The sink logit's
gradient, -sum_i exp(sink - lse_i) delta_i, is O(T) and computed around the kernels.

Tiles for the 910B and their arithmetic: ascend_ops/triton/__init__.py.
"""
import torch
import triton
import triton.language as tl

NEG = tl.constexpr(-1e30)  # "minus infinity" that keeps exp() and max() finite


@triton.jit
def _tile(base, idx, n, offs, WIDTH: tl.constexpr):
    """Rows ``idx`` (those < n) and columns ``offs`` (those < WIDTH) of a row-major [*, WIDTH] array; 0 elsewhere."""
    return tl.load(base + idx[:, None] * WIDTH + offs[None, :], mask=(idx[:, None] < n) & (offs[None, :] < WIDTH),
                   other=0.0)


@triton.jit
def _put(base, idx, n, offs, WIDTH: tl.constexpr, value):
    tl.store(base + idx[:, None] * WIDTH + offs[None, :], value, mask=(idx[:, None] < n) & (offs[None, :] < WIDTH))


@triton.jit
def _band(off, pid_m, n_keys, WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """[lo, hi): the band's keys query block ``pid_m`` may see, lo aligned to a key block."""
    lo = 0
    if WINDOW > 0:
        lo = tl.maximum(off + pid_m * BLOCK_M - WINDOW + 1, 0) // BLOCK_N * BLOCK_N
    return lo, tl.minimum(off + (pid_m + 1) * BLOCK_M, n_keys)


@triton.jit
def _query_block(n_keys, H, HK, TQ, DP: tl.constexpr, DVP: tl.constexpr, BLOCK_M: tl.constexpr):
    """This program's query block: (block, batch x head, its KV head, rows, head-dim offsets, the rows' first
    position offset, positions)."""
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    off = n_keys - TQ
    return pid_m, bh, bh // H * HK + bh % H // (H // HK), rows, tl.arange(0, DP), tl.arange(0, DVP), off, off + rows


@triton.jit
def _visible(pos, keys, n_keys, WINDOW: tl.constexpr, SINKS: tl.constexpr, SINK_PART: tl.constexpr):
    """[M, N] mask of the keys a part covers: the band (j <= p, p - j < window) or the sink tokens the band leaves
    out (j < sinks, p - j >= window)."""
    p, j = pos[:, None], keys[None, :]
    seen = (j <= p) & (j < n_keys)
    if SINK_PART:
        seen = seen & (j < SINKS) & (p - j >= WINDOW)
    elif WINDOW > 0:
        seen = seen & (p - j < WINDOW)
    return seen


@triton.jit
def _fwd_block(q, acc, m_i, l_i, k_base, v_base, pos, keys, n_keys, scale, d_offs, dv_offs,
               D: tl.constexpr, DV: tl.constexpr, WINDOW: tl.constexpr, SINKS: tl.constexpr,
               SINK_PART: tl.constexpr):
    mask = _visible(pos, keys, n_keys, WINDOW, SINKS, SINK_PART)
    k, v = _tile(k_base, keys, n_keys, d_offs, D), _tile(v_base, keys, n_keys, dv_offs, DV)
    s = tl.where(mask, tl.dot(q, tl.trans(k)) * scale, NEG)
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp(m_i - m_new)
    p = tl.where(mask, tl.exp(s - m_new[:, None]), 0.0)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i


@triton.jit
def _fwd(Q, K, V, SINK, O, LSE, n_keys, H, HK, TQ, TK, scale,
         D: tl.constexpr, DV: tl.constexpr, DP: tl.constexpr, DVP: tl.constexpr, WINDOW: tl.constexpr,
         SINKS: tl.constexpr, USE_SINK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
         BLOCK_S: tl.constexpr):
    pid_m, bh, kv, rows, d_offs, dv_offs, off, pos = _query_block(n_keys, H, HK, TQ, DP, DVP, BLOCK_M)
    q = _tile(Q + bh * TQ * D, rows, TQ, d_offs, D)
    k_base, v_base = K + kv * TK * D, V + kv * TK * DV
    if USE_SINK:  # the sink logit opens the softmax: running max = the logit, running sum exp(0) = 1
        m_i = tl.zeros([BLOCK_M], tl.float32) + tl.load(SINK + bh % H)
        l_i = tl.full([BLOCK_M], 1.0, tl.float32)
    else:
        m_i = tl.full([BLOCK_M], NEG, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DVP], tl.float32)
    if WINDOW > 0 and SINKS > 0:  # the sink tokens the band leaves out
        acc, m_i, l_i = _fwd_block(q, acc, m_i, l_i, k_base, v_base, pos, tl.arange(0, BLOCK_S), n_keys, scale,
                                   d_offs, dv_offs, D, DV, WINDOW, SINKS, True)
    lo, hi = _band(off, pid_m, n_keys, WINDOW, BLOCK_M, BLOCK_N)
    for start in range(lo, hi, BLOCK_N):
        acc, m_i, l_i = _fwd_block(q, acc, m_i, l_i, k_base, v_base, pos, start + tl.arange(0, BLOCK_N), n_keys,
                                   scale, d_offs, dv_offs, D, DV, WINDOW, SINKS, False)
    l_i = tl.where(l_i > 0, l_i, 1.0)  # padding rows past Tq (with a window) see no key; they are not stored
    _put(O + bh * TQ * DV, rows, TQ, dv_offs, DV, acc / l_i[:, None])
    tl.store(LSE + bh * TQ + rows, m_i + tl.log(l_i), mask=rows < TQ)


@triton.jit
def _dq_block(q, do, lse, delta, dq, k_base, v_base, pos, keys, n_keys, scale, d_offs, dv_offs,
              D: tl.constexpr, DV: tl.constexpr, WINDOW: tl.constexpr, SINKS: tl.constexpr, SINK_PART: tl.constexpr):
    mask = _visible(pos, keys, n_keys, WINDOW, SINKS, SINK_PART)
    k, v = _tile(k_base, keys, n_keys, d_offs, D), _tile(v_base, keys, n_keys, dv_offs, DV)
    p = tl.where(mask, tl.exp(tl.dot(q, tl.trans(k)) * scale - lse[:, None]), 0.0)
    ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k) * scale


@triton.jit
def _dq(Q, K, V, DO, LSE, DELTA, DQ, n_keys, H, HK, TQ, TK, scale,
        D: tl.constexpr, DV: tl.constexpr, DP: tl.constexpr, DVP: tl.constexpr, WINDOW: tl.constexpr,
        SINKS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr):
    pid_m, bh, kv, rows, d_offs, dv_offs, off, pos = _query_block(n_keys, H, HK, TQ, DP, DVP, BLOCK_M)
    q, do = _tile(Q + bh * TQ * D, rows, TQ, d_offs, D), _tile(DO + bh * TQ * DV, rows, TQ, dv_offs, DV)
    lse = tl.load(LSE + bh * TQ + rows, mask=rows < TQ, other=0.0)
    delta = tl.load(DELTA + bh * TQ + rows, mask=rows < TQ, other=0.0)
    k_base, v_base = K + kv * TK * D, V + kv * TK * DV
    dq = tl.zeros([BLOCK_M, DP], tl.float32)
    if WINDOW > 0 and SINKS > 0:
        dq = _dq_block(q, do, lse, delta, dq, k_base, v_base, pos, tl.arange(0, BLOCK_S), n_keys, scale, d_offs,
                       dv_offs, D, DV, WINDOW, SINKS, True)
    lo, hi = _band(off, pid_m, n_keys, WINDOW, BLOCK_M, BLOCK_N)
    for start in range(lo, hi, BLOCK_N):
        dq = _dq_block(q, do, lse, delta, dq, k_base, v_base, pos, start + tl.arange(0, BLOCK_N), n_keys, scale,
                       d_offs, dv_offs, D, DV, WINDOW, SINKS, False)
    _put(DQ + bh * TQ * D, rows, TQ, d_offs, D, dq)


@triton.jit
def _dkdv(Q, K, V, DO, LSE, DELTA, DK, DVAL, n_keys, H, HK, TQ, TK, scale,
          D: tl.constexpr, DV: tl.constexpr, DP: tl.constexpr, DVP: tl.constexpr, WINDOW: tl.constexpr,
          SINKS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n, bkv = tl.program_id(0), tl.program_id(1)
    group = H // HK
    keys = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    d_offs, dv_offs = tl.arange(0, DP), tl.arange(0, DVP)
    k, v = _tile(K + bkv * TK * D, keys, n_keys, d_offs, D), _tile(V + bkv * TK * DV, keys, n_keys, dv_offs, DV)
    off = n_keys - TQ
    # query rows that may see these keys: positions >= the block's first key; with a window, only up to the last
    # key + window - 1, unless the block holds sink tokens (every later query sees those)
    lo = tl.maximum(pid_n * BLOCK_N - off, 0) // BLOCK_M * BLOCK_M
    hi = TQ
    if WINDOW > 0:
        if pid_n * BLOCK_N >= SINKS:
            hi = tl.minimum(pid_n * BLOCK_N + BLOCK_N - 1 + WINDOW - off, TQ)
    dk = tl.zeros([BLOCK_N, DP], tl.float32)
    dv = tl.zeros([BLOCK_N, DVP], tl.float32)
    for g in range(0, group):
        bh = bkv // HK * H + bkv % HK * group + g
        for start in range(lo, hi, BLOCK_M):
            rows = start + tl.arange(0, BLOCK_M)
            q, do = _tile(Q + bh * TQ * D, rows, TQ, d_offs, D), _tile(DO + bh * TQ * DV, rows, TQ, dv_offs, DV)
            lse = tl.load(LSE + bh * TQ + rows, mask=rows < TQ, other=0.0)
            delta = tl.load(DELTA + bh * TQ + rows, mask=rows < TQ, other=0.0)
            pos = off + rows  # every key the query sees: the band's and the sink tokens the band leaves out
            band = _visible(pos, keys, n_keys, WINDOW, SINKS, False)
            seen = (band | _visible(pos, keys, n_keys, WINDOW, SINKS, True)) & (rows[:, None] < TQ)
            p = tl.where(seen, tl.exp(tl.dot(q, tl.trans(k)) * scale - lse[:, None]), 0.0)
            dv += tl.dot(tl.trans(p).to(do.dtype), do)
            ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
            dk += tl.dot(tl.trans(ds).to(q.dtype), q) * scale
    _put(DK + bkv * TK * D, keys, TK, d_offs, D, dk)
    _put(DVAL + bkv * TK * DV, keys, TK, dv_offs, DV, dv)


def _pow2(n: int, least: int = 16) -> int:
    return max(least, triton.next_power_of_2(n))


def _dims(q, k, v):
    b, h, tq, d = q.shape
    hk, tk, dv = k.shape[1], k.shape[2], v.shape[3]
    if h % hk:
        raise ValueError(f"GQA: {h} query heads are not a multiple of {hk} KV heads")
    return b, h, hk, tq, tk, d, dv, dict(D=d, DV=dv, DP=_pow2(d), DVP=_pow2(dv))


def forward(q, k, v, sink=None, scale=1.0, window=0, sink_tokens=0, n_keys=None, block_m=16, block_n=16):
    """(o [B, H, Tq, Dv] float32, lse [B, H, Tq] float32); ``n_keys`` = valid keys of a fixed-capacity cache."""
    b, h, hk, tq, tk, d, dv, dims = _dims(q, k, v)
    n = tk if n_keys is None else int(n_keys)
    o = torch.empty((b, h, tq, dv), dtype=torch.float32)
    lse = torch.empty((b, h, tq), dtype=torch.float32)
    s = torch.zeros(h, dtype=torch.float32) if sink is None else sink.float().contiguous()
    _fwd[(triton.cdiv(tq, block_m), b * h)](
        q.contiguous(), k.contiguous(), v.contiguous(), s, o, lse, n, h, hk, tq, tk, float(scale), **dims,
        WINDOW=window, SINKS=sink_tokens, USE_SINK=sink is not None, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_S=_pow2(sink_tokens))
    return o, lse


def backward(q, k, v, sink, o, lse, do, scale=1.0, window=0, sink_tokens=0, n_keys=None, block_m=16, block_n=16):
    """(dq, dk, dv, dsink or None), float32, for the output gradient ``do``."""
    b, h, hk, tq, tk, d, dv_, dims = _dims(q, k, v)
    n = tk if n_keys is None else int(n_keys)
    delta = (do.float() * o).sum(-1).contiguous()
    q, k, v, do = q.contiguous(), k.contiguous(), v.contiguous(), do.contiguous()
    dq = torch.empty((b, h, tq, d), dtype=torch.float32)
    dk = torch.empty((b, hk, tk, d), dtype=torch.float32)
    dv = torch.empty((b, hk, tk, dv_), dtype=torch.float32)
    common = dict(**dims, WINDOW=window, SINKS=sink_tokens, BLOCK_M=block_m, BLOCK_N=block_n)
    _dq[(triton.cdiv(tq, block_m), b * h)](q, k, v, do, lse, delta, dq, n, h, hk, tq, tk, float(scale), **common,
                                           BLOCK_S=_pow2(sink_tokens))
    _dkdv[(triton.cdiv(tk, block_n), b * hk)](q, k, v, do, lse, delta, dk, dv, n, h, hk, tq, tk, float(scale),
                                              **common)
    dsink = None if sink is None else -(torch.exp(sink.float().view(1, h, 1) - lse) * delta).sum((0, 2))
    return dq, dk, dv, dsink
