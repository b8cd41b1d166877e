"""The CPU kernels (C++ through ops.Custom AOT) against their plain-ops references: the attention kernel (forward,
backward, masks: causal, sliding window, sink tokens; the learnable sink logit, GQA, Dv != D, a partly filled
cache), the heads kernel (layout change with rotary positions), RMSNorm and the in-place cache write."""
import numpy as np
import pytest
import mindspore as ms

from ascend_ops import CacheWrite, FusedAttention, Heads, LatentAbsorb
from mindedit.layers import RMSNorm
from ascend_ops.cpu_kernel import attention_cpu
from ascend_ops.reference import absorb_output_reference, absorb_query_reference, attention_reference

CASES = [
    # B, H, Hk, Tq, Tk, D, Dv, window, sink_tokens, sink_logit
    (2, 4, 2, 37, 37, 16, 16, 0, 0, False),
    (1, 6, 3, 70, 100, 24, 8, 16, 3, True),     # queries are the last 70 of 100 positions
    (2, 2, 1, 1, 50, 8, 8, 10, 2, True),        # a decode step
    (1, 3, 3, 130, 130, 64, 64, 33, 0, False),  # several tiles, window cuts through them
    (1, 2, 2, 200, 200, 40, 24, 64, 4, False),  # window + sink tokens across tile borders
    # few query rows per kv head take the split-K path (kernel's kDecodeRows): keys in chunks of 256, merged
    (1, 9, 1, 1, 600, 24, 16, 0, 0, False),     # MLA's absorbed decode: 9 heads on one latent head, Dv < D
    (2, 6, 2, 2, 700, 16, 8, 100, 4, True),     # 2 rows per head; the window leaves whole chunks out but the sinks
    (1, 8, 1, 3, 301, 20, 16, 0, 0, True),      # 24 rows (the widest lane block), a 45-key last chunk (1 past 4s)
]


def tensors(rng, b, h, hk, tq, tk, d, dv):
    t = lambda *s: ms.Tensor(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    return t(b, h, tq, d), t(b, hk, tk, d), t(b, hk, tk, dv), t(h), t(b, h, tq, dv)


@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_reference(case, rng):
    b, h, hk, tq, tk, d, dv, window, sink_tokens, use_sink = case
    q, k, v, sink, w = tensors(rng, b, h, hk, tq, tk, d, dv)
    sink = sink if use_sink else None
    kw = dict(scale=0.3, window=window, sink_tokens=sink_tokens)
    o1, l1 = attention_cpu(q, k, v, sink, **kw)
    o2, l2 = attention_reference(q, k, v, sink, **kw)
    np.testing.assert_allclose(o1.asnumpy(), o2.asnumpy(), atol=2e-5)
    np.testing.assert_allclose(l1.asnumpy(), l2.asnumpy(), atol=2e-5)

    def loss(fn):
        return lambda q, k, v, s: (fn(q, k, v, s if use_sink else None, **kw)[0] * w).sum()

    g1 = ms.grad(loss(attention_cpu), grad_position=(0, 1, 2, 3))(q, k, v, sink if use_sink else w[0, 0, 0, :h])
    g2 = ms.grad(loss(attention_reference), grad_position=(0, 1, 2, 3))(q, k, v, sink if use_sink else w[0, 0, 0, :h])
    for name, a, b_ in zip(["dq", "dk", "dv", "dsink"], g1, g2):
        if name == "dsink" and not use_sink:
            continue
        np.testing.assert_allclose(a.asnumpy(), b_.asnumpy(), atol=5e-5, err_msg=name)


@pytest.mark.parametrize("tq", [1, 40])  # a decode step (split-K path), a prefill chunk (tiled path)
def test_latent_attention_reads_the_values_inside_the_keys(tq, rng):
    """MLA absorbed on the cpu face: the values are the keys' first 16 of 24 channels, read in place in a partly
    filled cache, equal to the reference given the sliced values, eager and compiled."""
    q, k, _, _, _ = tensors(rng, 1, 9, 1, tq, 300, 24, 16)
    kv_len = ms.Tensor(np.array([290], np.int32))  # two of the split-K path's 256-key chunks
    want, _ = attention_reference(q, k, k[..., :16], scale=0.3, kv_len=kv_len)
    cell = FusedAttention(0.3, face="cpu", latent=16)
    for got in (cell(q, k, None, None, kv_len), ms.jit(cell.construct)(q, k, None, None, kv_len)):
        assert got.shape == (1, 9, tq, 16)
        np.testing.assert_allclose(got.asnumpy(), want.asnumpy(), atol=2e-5)


@pytest.mark.parametrize("t", [1, 5])
def test_latent_absorb_matches_reference(t, rng):
    """MLA's absorption from kv_b_proj's weight as it lies ([H * (nope + v), rank]; widths off the 8-lane grid),
    eager and compiled: the queries' key part folded in (rotary channels passed through), the value part applied."""
    h, nope, rope, v, rank = 3, 12, 4, 6, 10
    t_ = lambda *s: ms.Tensor(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    q, o, w = t_(2, h, t, nope + rope), t_(2, h, t, rank), t_(h * (nope + v), rank)
    cell = LatentAbsorb(nope, v, face="cpu")
    want_q, want_o = absorb_query_reference(q, w, nope, v), absorb_output_reference(o, w, nope, v)
    for query, output in ((cell.query, cell.output), (ms.jit(cell.query), ms.jit(cell.output))):
        got_q, got_o = query(q, w), output(o, w)
        assert got_q.shape == (2, h, t, rank + rope) and got_o.shape == (2, h, t, v)
        np.testing.assert_allclose(got_q.asnumpy(), want_q.asnumpy(), atol=1e-5)
        np.testing.assert_allclose(got_o.asnumpy(), want_o.asnumpy(), atol=1e-5)


def test_kv_len_ignores_unfilled_slots(rng):
    """A fixed-capacity cache: only the first kv_len keys count, whatever the other slots hold."""
    q, k, v, _, _ = tensors(rng, 1, 4, 2, 3, 40, 16, 16)
    kv_len = ms.Tensor(np.array([25], np.int32))
    o_full, _ = attention_reference(q, k[:, :, :25], v[:, :, :25], scale=0.25)
    for fn in (attention_cpu, attention_reference):
        o, _ = fn(q, k, v, scale=0.25, kv_len=kv_len)
        np.testing.assert_allclose(o.asnumpy(), o_full.asnumpy(), atol=2e-5)


def test_fused_attention_cell_in_graph_mode(rng):
    q, k, v, sink, _ = tensors(rng, 2, 4, 2, 50, 50, 16, 16)
    outs = []
    for face in ("cpu", "reference"):
        cell = FusedAttention(0.25, window=8, sink_tokens=2, use_sink=True, face=face)
        eager = cell(q, k, v, sink).asnumpy()
        graph = ms.jit(cell.construct)(q, k, v, sink).asnumpy()
        np.testing.assert_allclose(eager, graph, atol=1e-6)
        outs.append(eager)
    np.testing.assert_allclose(outs[0], outs[1], atol=2e-5)


def test_fully_masked_rows_do_not_produce_nan(rng):
    """Sliding window of 1 without sinks: each row sees only itself; no row may be empty or NaN."""
    q, k, v, _, _ = tensors(rng, 1, 2, 2, 70, 70, 8, 8)
    o, lse = attention_cpu(q, k, v, scale=1.0, window=1)
    np.testing.assert_allclose(o.asnumpy(), v.asnumpy(), atol=1e-6)
    assert np.isfinite(lse.asnumpy()).all()


@pytest.mark.parametrize("rotary", [10, 6, 0])  # every channel, the last 6 of 10 (MLA's rope part), none
@pytest.mark.parametrize("jit", [False, True])
def test_heads_kernel_matches_reference(rotary, jit, rng):
    """front ([B, T, H, D] -> [B, H, T, D], rotated) and back, values and gradients. cos/sin are random, their
    halves unequal, so the backward must be the forward's exact transpose, not just the inverse rotation."""
    b, t, h, d = 2, 7, 3, 10
    t_ = lambda *s: ms.Tensor(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    x, w, o, cos, sin = t_(b, t, h, d), t_(b, h, t, d), t_(b, h, t, d), t_(t, max(rotary, 1)), t_(t, max(rotary, 1))
    results = {}
    for face in ("cpu", "reference"):
        heads = Heads(rotary, face)

        def front(x):
            return heads.front(x, cos, sin) if rotary else heads.front(x)

        back = heads.back
        if jit:
            front, back = ms.jit(front), ms.jit(back)
        results[face] = [front(x), back(o), ms.grad(lambda x: (front(x) * w).sum())(x),
                         ms.grad(lambda o: (back(o) * x).sum())(o)]
    for name, a, b_ in zip(["front", "back", "d front", "d back"], results["cpu"], results["reference"]):
        np.testing.assert_allclose(a.asnumpy(), b_.asnumpy(), atol=1e-6, err_msg=name)


@pytest.mark.parametrize("jit", [False, True])
def test_rms_norm_kernel_matches_plain_ops(jit, rng):
    """mindedit.layers.RMSNorm on the kernel (the CPU default) and on plain ops: output, input and weight gradients."""
    x = ms.Tensor(3 * rng.standard_normal((2, 5, 3, 12)).astype(np.float32))
    w = ms.Tensor(rng.standard_normal((2, 5, 3, 12)).astype(np.float32))
    weight = ms.Tensor(rng.standard_normal(12).astype(np.float32))
    results = []
    for fused in (True, False):
        norm = RMSNorm(12, 1e-5)
        assert norm.fused is not None
        if not fused:
            norm.fused = None
        norm.weight.set_data(weight)

        def forward(x):
            return norm(x)

        def loss(x):
            return (norm(x) * w).sum()

        grad = ms.grad(loss, grad_position=0, weights=[norm.weight])
        if jit:
            forward, grad = ms.jit(forward), ms.jit(grad)
        dx, (dweight,) = grad(x)
        results.append((forward(x), dx, dweight))
    for name, a, b_ in zip(["y", "dx", "dweight"], *results):
        np.testing.assert_allclose(a.asnumpy(), b_.asnumpy(), atol=1e-5 if name == "dweight" else 2e-6, err_msg=name)


def test_cache_write_in_place_in_graph_mode(rng):
    """The kernel writes the new slots into the cache where it lies (a mutable graph input, as in decoding), step
    after step, and the value read back through CacheWrite is the written cache: as ScatterNdUpdate's."""
    t = lambda *s: ms.Tensor(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    start = t(2, 3, 40, 8)
    caches = {face: ms.mutable((ms.Tensor(start.asnumpy()),)) for face in ("cpu", "reference")}
    for pos, n in [(0, 5), (5, 1), (6, 1), (39, 1)]:
        new = t(2, 3, n, 8)
        for face, cache in caches.items():
            write = CacheWrite(face=face)

            def step(c, x, p):
                return write(c[0], x, p) * 1.0

            read = ms.jit(step)(cache, new, ms.Tensor([pos], ms.int32))
            np.testing.assert_array_equal(read.asnumpy(), cache[0].asnumpy())  # returned = the cache itself
        np.testing.assert_array_equal(caches["cpu"][0].asnumpy(), caches["reference"][0].asnumpy())
        np.testing.assert_array_equal(caches["cpu"][0].asnumpy()[:, :, pos:pos + n], new.asnumpy())
    np.testing.assert_array_equal(caches["cpu"][0].asnumpy()[:, :, 7:39], start.asnumpy()[:, :, 7:39])
