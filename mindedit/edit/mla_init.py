"""Initialising an MLA layer from a GQA/MHA source layer (NumPy, float64), activation-aware.

Rotary part. MLA has one rotary key shared by all heads, of qk_rope_head_dim = 2 x (number of *channels*).
A channel is a frequency pair f of the source head (dims f and f + D/2, HF rotate_half layout) together with a
unit vector u over the KV heads: the shared key is sum_j u_j k_{j,f} and query head h reads it through
u_{g(h)} q_{h,f}, where g(h) is its KV head. Rotary rotation acts on every head's pair f by the same angle, so
it commutes with mixing heads: when the channels at f span all KV heads, the source's q.k at f is reproduced
exactly. The strategies differ only in the channels they offer:
- ``partial_rope_svd`` (MHA2MLA): u = e_j, one channel per (KV head, frequency), ranked by the 2-norm product
  E||q_{h,f}|| x E||k_{j,f}|| summed over the heads that read it;
- ``rorope_svd`` (TransMLA's RoRoPE): u = eigenvectors of the KV-head covariance of k_{.,f}, so the first channel
  of each frequency gathers most of its energy; ranked the same way.
Whatever the kept channels do not capture of a key loses its rotation and joins the non-rotary key.

Latent part. Non-rotary keys and values of all KV heads are fitted jointly from the layer input x through a
rank-r bottleneck: reduced-rank regression, i.e. the SVD of the fitted outputs W X^T on calibration
activations (for a source without key norms, exactly the SVD of W X^T), with keys and values weighted first
(``latent_balance``: by the queries and o_proj columns that read them, then to equal Frobenius norm). Sources
with per-head q/k RMSNorm (Qwen3): targets are the normed keys, fitted by least
squares; the query norm is kept over the extended head, its weight rescaled by the measured RMS ratio, or, for an
``export_compatible`` student (DeepSeek-V3 has no per-head query norm), the normed queries are fitted by least
squares like the keys. Such a student's rope key keeps every k-th source frequency, the standard spectrum of its
own dimension (mindedit.edit.config.MLAConfig); with ``freq_fold`` each kept frequency's channel is chosen over
it and the left-out neighbours above it (TransMLA's FreqFold).
"""
from typing import NamedTuple

import numpy as np

from mindedit.attention.mla import has_query_bias

RIDGE = 1e-7


def _aug(x):
    return np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)


def lstsq(xa, y):
    """W [in+1, out] minimising ||xa W - y|| (tiny ridge for rank-deficient calibration sets)."""
    g = xa.T @ xa
    g += np.eye(g.shape[0]) * RIDGE * np.trace(g) / g.shape[0]
    return np.linalg.solve(g, xa.T @ y)


def fixed_signs(vectors):
    """The columns of ``vectors`` (singular or eigen vectors) each flipped so that its largest entry is positive.
    LAPACK may return either sign, and which one depends on the thread count, so without this the same job made
    differently signed (equivalent) students in one process and in a sharded run."""
    top = np.argmax(np.abs(vectors), axis=0)
    return vectors * np.where(vectors[top, np.arange(vectors.shape[1])] < 0, -1.0, 1.0)


def right_singular_vectors(a):
    """V^T of a's SVD. LAPACK's divide and conquer (gesdd, numpy's) now and then fails to converge (seen once in
    bench/init_quality.py on SmolLM2, not reproduced in a process of its own); the slower QR iteration (gesvd)
    is the fallback."""
    try:
        return np.linalg.svd(a, full_matrices=False)[2]
    except np.linalg.LinAlgError:
        import scipy.linalg
        return scipy.linalg.svd(a, full_matrices=False, lapack_driver="gesvd")[2]


def reduced_rank(xa, w, rank):
    """Factor the linear map xa -> xa w through ``rank`` dims, optimal on the calibration set:
    returns down [in+1, rank] and up [rank, out] with xa w ~ (xa down) up."""
    vt = right_singular_vectors(xa @ w)
    v = fixed_signs(vt[:rank].T)
    if v.shape[1] < rank:  # fewer outputs than rank: pad with zero directions
        v = np.pad(v, ((0, 0), (0, rank - v.shape[1])))
    return w @ v, v.T


def rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def source_projections(src, x, cfg):
    """Source queries and keys as the attention sees them before rotary (normed for Qwen3), and values.
    src: dict of float64 arrays with HF names; x [N, hidden]. Returns q [N, H, D], k [N, Hk, D], v [N, Hk, D]."""
    n, h, hk, d = x.shape[0], cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim

    def proj(name, heads):
        y = x @ src[f"{name}.weight"].T + src.get(f"{name}.bias", 0.0)
        return y.reshape(n, heads, d)

    q, k, v = proj("q_proj", h), proj("k_proj", hk), proj("v_proj", hk)
    if cfg.qk_norm:
        q = rms_norm(q, src["q_norm.weight"], cfg.rms_norm_eps)
        k = rms_norm(k, src["k_norm.weight"], cfg.rms_norm_eps)
    return q, k, v


def select_channels(q, k, group: int, n_channels: int, strategy: str, step: int = 0, fold: bool = False):
    """Returns a list of (frequency index f, U [span, Hk]) ranked by expected |q.k| contribution, best first: the
    channel's shared key is sum_{s, j} U[s, j] k_{j, f+s}, rotated at frequency f. Without ``step`` span is 1 and
    the best channels over all frequencies are taken. With ``step`` (export_compatible): the best channel at each
    of the frequencies 0, step, 2 step, ..., the standard spectrum of a rope key of 2 x n_channels dims; with
    ``fold`` (TransMLA's FreqFold) its candidates span the ``step`` neighbouring frequencies f .. f + step - 1
    (the key covariance over those frequencies and all KV heads for ``rorope_svd``), so frequencies the
    spectrum leaves out are rotated at their kept neighbour's instead of not at all."""
    n, h, d = q.shape
    hk, half = k.shape[1], d // 2
    qn = np.stack([np.linalg.norm(q[..., [f, f + half]], axis=-1).mean(0) for f in range(half)])  # [half, H]
    span = step if fold else 1
    starts = range(0, step * n_channels, step) if step else range(half)
    candidates = []
    for f in starts:
        freqs = list(range(f, f + span))
        kf = np.concatenate([k[..., [g, g + half]] for g in freqs], axis=1)  # [N, span * Hk, 2]
        if strategy == "partial_rope_svd":
            basis = [(np.eye(span * hk)[m], np.linalg.norm(kf[:, m], axis=-1).mean()) for m in range(span * hk)]
        else:
            cov = np.einsum("tjc,tic->ji", kf, kf) / n
            lam, vec = np.linalg.eigh(cov)
            vec = fixed_signs(vec)
            basis = [(vec[:, m], np.sqrt(max(lam[m], 0.0))) for m in range(span * hk)]
        for u, k_size in basis:
            u = u.reshape(span, hk)
            q_size = sum(abs(u[s, hh // group]) * qn[g, hh] for s, g in enumerate(freqs) for hh in range(h))
            candidates.append((q_size * k_size, f, u))
    candidates.sort(key=lambda c: -c[0])
    if step:
        best = {}
        for _, f, u in candidates:
            best.setdefault(f, u)
        return sorted(best.items(), key=lambda c: c[0])
    return [(f, u) for _, f, u in candidates[:n_channels]]


def rope_basis(channels, hk: int, d: int) -> np.ndarray:
    """B [dr, Hk, D]: rope key dim c reads the source keys through B[c] (channel c's U in the first half-dims of its
    frequencies, the same U in the second half at dim c + dr / 2). The rows are orthonormal."""
    n_ch, half = len(channels), d // 2
    basis = np.zeros((2 * n_ch, hk, d))
    for c, (f, u) in enumerate(channels):
        for s in range(u.shape[0]):
            basis[c, :, f + s] = u[s]
            basis[c + n_ch, :, f + s + half] = u[s]
    return basis


def latent_balance(y, q, o_proj, hk: int, how: str) -> np.ndarray:
    """Weights [2 Hk D] of the latent's fitted outputs (non-rotary keys, then values) in the rank-r factorisation:
    the bottleneck keeps what is large after weighting. ``none``: as they are; ``norm`` (TransMLA's BKV): keys and
    values scaled to equal Frobenius norm; ``sensitivity``: each key dim weighted by the RMS of the query dims that
    read it (a key error moves the scores by q . dk) and each value dim by the norm of the o_proj columns that read
    it (the output moves by o_proj dv), then keys and values to equal norm as in ``norm``."""
    _, h, d = q.shape
    group, kd = h // hk, hk * d
    if how == "none":
        return np.ones(2 * kd)
    weight_k, weight_v = np.ones(kd), np.ones(kd)
    if how == "sensitivity":
        weight_k = np.sqrt((q * q).mean(0).reshape(hk, group, d).sum(1)).reshape(kd)
        weight_v = np.sqrt((o_proj * o_proj).sum(0).reshape(hk, group, d).sum(1)).reshape(kd)
    scale_k = 1.0 / max(np.linalg.norm(y[:, :kd] * weight_k), 1e-12)
    scale_v = 1.0 / max(np.linalg.norm(y[:, kd:] * weight_v), 1e-12)
    return np.concatenate([weight_k * scale_k, weight_v * scale_v])


class LayerSplit(NamedTuple):
    """The first half of a layer's init: the source queries [N, H, D], the rope channels and their basis, the rope
    key [N, dr], and the latent's problem: w [hidden+1, 2 Hk D], the least-squares map from x to the non-rotary
    keys and values, and the balance their factorisation weighs them by."""
    q: np.ndarray
    channels: list
    basis: np.ndarray
    k_pe: np.ndarray
    w: np.ndarray
    balance: np.ndarray


def split_layer(src: dict, x: np.ndarray, cfg, target) -> LayerSplit:
    hk, d, dr = cfg.num_key_value_heads, cfg.head_dim, target.qk_rope_head_dim
    q, k, v = source_projections(src, x, cfg)
    step = d // dr if target.export_compatible else 0
    channels = select_channels(q, k, cfg.num_attention_heads // hk, dr // 2, target.init, step, target.freq_fold)
    channels.sort(key=lambda c: c[0])
    # rotary key: channel c holds sum_{s,j} U_{s,j} k_{j,f+s} in dims c and c + dr/2; what the channels leave
    # of each key becomes the non-rotary key
    basis = rope_basis(channels, hk, d)
    k_pe = np.einsum("tjd,cjd->tc", k, basis)
    k_rest = k - np.einsum("tc,cjd->tjd", k_pe, basis)
    # latent: non-rotary keys and values of every KV head, to go through a rank-r bottleneck
    y = np.concatenate([k_rest.reshape(len(x), hk * d), v.reshape(len(x), hk * d)], axis=1)
    return LayerSplit(q, channels, basis, k_pe, lstsq(_aug(x), y),
                      latent_balance(y, q, src["o_proj.weight"], hk, target.latent_balance))


def latent_spectrum(src: dict, x: np.ndarray, cfg, target) -> np.ndarray:
    """Singular values of the balanced latent map on the calibration set: what a rank-r latent keeps of them is
    what the init keeps (bench/init_quality.py --rank-allocation weighs uniform against per-layer ranks)."""
    x = x.astype(np.float64)
    split = split_layer(src, x, cfg, target)
    return np.linalg.svd(_aug(x) @ (split.w * split.balance), compute_uv=False)


def init_mla_layer(src: dict, x: np.ndarray, cfg, target, rope_theta: float, rng=None) -> dict:
    """Student parameters (HF-style names inside the MLA module, float64) for one layer.

    src: the source attention's parameters (q_proj.weight, ..., q_norm.weight); x: calibration inputs of this
    layer's attention [N, hidden]."""
    if target.init == "random":
        return {}
    h, hk, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    group, half, dr = h // hk, d // 2, target.qk_rope_head_dim
    x = x.astype(np.float64)
    xa = _aug(x)
    q, channels, basis, k_pe, w, balance = split_layer(src, x, cfg, target)
    inv_freq = 1.0 / (rope_theta ** (np.arange(0, d, 2) / d))
    down, up = reduced_rank(xa, w * balance, target.kv_lora_rank)
    up = up / balance                        # [r, 2 Hk D]
    c = xa @ down
    w_pe = lstsq(xa, k_pe)
    kv_a = np.concatenate([down, w_pe], axis=1)          # [hidden+1, r + dr]
    up_k = up[:, :hk * d].reshape(-1, hk, d)
    up_v = up[:, hk * d:].reshape(-1, hk, d)
    kv_b = np.concatenate([np.stack([up_k[:, hh // group] for hh in range(h)], 0),
                           np.stack([up_v[:, hh // group] for hh in range(h)], 0)], axis=2)  # [H, r, 2D]
    out = {"kv_a_proj_with_mqa.weight": kv_a[:-1].T,
           "kv_b_proj.weight": kv_b.transpose(0, 2, 1).reshape(h * 2 * d, -1),
           "o_proj.weight": src["o_proj.weight"]}
    if not target.export_compatible:  # (compatible: the standard frequencies of target.rope_theta, the same ones)
        out["rotary_inv_freq"] = np.array([inv_freq[f] for f, _ in channels])
    if cfg.attention_bias:
        out["kv_a_proj_with_mqa.bias"] = kv_a[-1]
        out["o_proj.bias"] = np.zeros(cfg.hidden_size)
    if target.latent_norm:
        out["kv_a_layernorm.weight"] = np.full(target.kv_lora_rank, np.sqrt(np.mean(c * c, axis=1)).mean())

    # queries: the source head (non-rotary part) and u_{g(h)} q_{h,f} per channel (rotary part), pre-norm; a
    # student without the source's query norm or bias (export_compatible) starts from the least-squares linear
    # map to the source's (normed) queries instead
    q_bias = has_query_bias(cfg, target)
    if target.q_norm or (not cfg.qk_norm and q_bias == cfg.attention_bias):
        wq = src["q_proj.weight"].reshape(h, d, -1)
        bq = src.get("q_proj.bias", np.zeros(h * d)).reshape(h, d)
    else:
        fit = lstsq(xa if q_bias else x, q.reshape(len(x), h * d))
        wq = fit[:x.shape[1]].T.reshape(h, d, -1)
        bq = (fit[-1] if q_bias else np.zeros(h * d)).reshape(h, d)
    rows, bias = [], []
    for hh in range(h):  # the rope part: this head's queries through its KV head's slice of the basis
        rows.append(np.concatenate([wq[hh], basis[:, hh // group] @ wq[hh]], axis=0))
        bias.append(np.concatenate([bq[hh], basis[:, hh // group] @ bq[hh]]))
    wq_s, bq_s = np.stack(rows), np.stack(bias)           # [H, D + dr, hidden], [H, D + dr]
    # the student's softmax scale is (D + dr)^-1/2, the source's D^-1/2: fold the ratio into the queries
    fix = np.sqrt((d + dr) / d)
    if target.q_norm:
        if not cfg.qk_norm:
            raise ValueError("q_norm on a student of a source without q/k norms is not initialisable")
        raw = (x @ wq_s.reshape(-1, x.shape[1]).T + bq_s.reshape(-1)).reshape(len(x), h, d + dr)
        src_raw = raw[..., :d]
        ratio = np.sqrt(np.mean(raw * raw, -1)) / np.sqrt(np.mean(src_raw * src_raw, -1) + 1e-30)
        wn = src["q_norm.weight"]
        pe_norm = np.concatenate([wn[[f for f, _ in channels]], wn[[f + half for f, _ in channels]]])
        out["q_norm.weight"] = np.concatenate([wn, pe_norm]) * fix * ratio.mean()
    else:
        wq_s, bq_s = wq_s * fix, bq_s * fix
    wq_s, bq_s = wq_s.reshape(h * (d + dr), -1), bq_s.reshape(-1)
    if target.q_lora_rank:
        q_down, q_up = reduced_rank(xa, np.concatenate([wq_s.T, bq_s[None]], axis=0), target.q_lora_rank)
        cq = xa @ q_down
        out["q_a_proj.weight"] = q_down[:-1].T
        if cfg.attention_bias:
            out["q_a_proj.bias"] = q_down[-1]
        out["q_b_proj.weight"] = q_up.T
        out["q_a_layernorm.weight"] = np.full(target.q_lora_rank, np.sqrt(np.mean(cq * cq, axis=1)).mean())
    else:
        out["q_proj.weight"] = wq_s
        if q_bias:
            out["q_proj.bias"] = bq_s
    return out
