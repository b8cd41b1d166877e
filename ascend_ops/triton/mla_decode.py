"""MLA's absorbed decode as one Triton-Ascend kernel: every query head against the one shared latent cache.

Absorbed MLA (DeepSeek-V2/V3's inference form) keeps one KV "head" per token: the normalised latent c_j
[kv_lora_rank] and the shared rope key r_j [qk_rope_head_dim]. A decode step's query per head is the nope query
absorbed through kv_b's key half (q_lat [H, kv_lora_rank]) plus its rope part (q_rope [H, qk_rope_head_dim]):

    s_hj = scale (q_lat_h . c_j + q_rope_h . r_j),   o_h = sum_j softmax_j(s_h) c_j   [kv_lora_rank]

(the caller applies kv_b's value half and o_proj). All heads read the same cache tile, so one program takes
BLOCK_H heads at once: each latent tile is loaded once per BLOCK_H heads and the score product is a real matrix
multiply ([BLOCK_H, D] x [D, BLOCK_N]) for the cube unit instead of H matrix-vector products. Long caches are split
across programs (flash-decoding): split s takes keys [s * keys_per_split, (s + 1) * keys_per_split) and writes its
partial (o, lse); the splits are merged around the kernel by their log-sum-exp, as ascend_ops.split merges parts.

Tiles for the 910B and their arithmetic: ascend_ops/triton/__init__.py.
"""
import torch
import triton
import triton.language as tl

from ascend_ops.triton.attention import NEG, _pow2, _tile


@triton.jit
def _decode(QL, QR, C, R, O, LSE, n_keys, H, T, scale, keys_per_split,
            DL: tl.constexpr, DR: tl.constexpr, DLP: tl.constexpr, DRP: tl.constexpr, BLOCK_H: tl.constexpr,
            BLOCK_N: tl.constexpr):
    b, hb, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    splits = tl.num_programs(2)
    heads = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    head_ok = heads < H
    dl, dr = tl.arange(0, DLP), tl.arange(0, DRP)
    ql, qr = _tile(QL + b * H * DL, heads, H, dl, DL), _tile(QR + b * H * DR, heads, H, dr, DR)
    m_i = tl.full([BLOCK_H], NEG, tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, DLP], tl.float32)
    start = split * keys_per_split
    stop = tl.minimum(start + keys_per_split, n_keys)
    for j0 in range(start, stop, BLOCK_N):
        keys = j0 + tl.arange(0, BLOCK_N)
        key_ok = keys < stop
        c, r = _tile(C + b * T * DL, keys, stop, dl, DL), _tile(R + b * T * DR, keys, stop, dr, DR)
        s = (tl.dot(ql, tl.trans(c)) + tl.dot(qr, tl.trans(r))) * scale
        s = tl.where(key_ok[None, :], s, NEG)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.where(key_ok[None, :], tl.exp(s - m_new[:, None]), 0.0)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(c.dtype), c)
        m_i = m_new
    seen = l_i > 0  # a split past the valid keys holds nothing: weight exp(NEG) in the merge
    out = (b * H + heads) * splits + split
    tl.store(O + out[:, None] * DL + dl[None, :], acc / tl.where(seen, l_i, 1.0)[:, None],
             mask=head_ok[:, None] & (dl[None, :] < DL))
    tl.store(LSE + out, tl.where(seen, m_i + tl.log(tl.where(seen, l_i, 1.0)), NEG), mask=head_ok)


def decode(q_lat, q_rope, latent, rope_key, scale, n_keys=None, block_h=16, block_n=16, splits=None):
    """q_lat [B, H, DL], q_rope [B, H, DR] against latent [B, T, DL] and rope_key [B, T, DR] (the first ``n_keys``
    valid) -> (o [B, H, DL] float32, lse [B, H] float32)."""
    b, h, dl = q_lat.shape
    t, dr = latent.shape[1], rope_key.shape[2]
    n = t if n_keys is None else int(n_keys)
    splits = splits or max(1, min(8, triton.cdiv(n, 4 * block_n)))
    per_split = triton.cdiv(triton.cdiv(n, splits), block_n) * block_n
    o = torch.empty((b, h, splits, dl), dtype=torch.float32)
    lse = torch.empty((b, h, splits), dtype=torch.float32)
    _decode[(b, triton.cdiv(h, block_h), splits)](
        q_lat.contiguous(), q_rope.contiguous(), latent.contiguous(), rope_key.contiguous(), o, lse, n, h, t,
        float(scale), per_split, DL=dl, DR=dr, DLP=_pow2(dl), DRP=_pow2(dr), BLOCK_H=block_h,
        BLOCK_N=block_n)
    total = torch.logsumexp(lse, -1)
    return (torch.exp(lse - total[..., None])[..., None] * o).sum(2), total
