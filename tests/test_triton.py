"""Triton-Ascend kernels (ascend_ops/triton): numerics under TRITON_INTERPRET=1 against ascend_ops.reference,
forward and backward, for every visibility the GateSWA attention has, and MLA's absorbed latent decode; and the
910B compile check (bishengir-compile's buffer placement), which must pass with the chosen tiles and fail when a
tile overflows the UB."""
import os
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
import torch

from ascend_ops.reference import attention_reference

REPO = Path(__file__).resolve().parents[1]
assert os.environ.get("TRITON_INTERPRET") == "1"  # tests/conftest.py
from ascend_ops.triton import attention, mla_decode  # noqa: E402

CASES = {  # b, h, hk, tq, tk, d, dv, window, sink_tokens, sink logit, valid keys (None: all)
    "causal": (1, 2, 2, 37, 37, 16, 16, 0, 0, False, None),
    "band": (1, 2, 2, 37, 37, 16, 16, 8, 0, False, None),
    "band + sink tokens + sink logit, GQA": (2, 4, 2, 37, 37, 16, 16, 8, 3, True, None),
    "sink logit on full attention": (1, 2, 1, 21, 21, 16, 16, 0, 0, True, None),
    "prefill chunk against a partly filled cache": (1, 4, 2, 5, 40, 16, 16, 8, 3, True, 29),
    "decode step against a cache": (1, 4, 2, 1, 40, 16, 16, 8, 3, False, 33),
    "head sizes not powers of two, Dv != D (MLA's naive form)": (1, 2, 2, 19, 19, 24, 40, 0, 0, False, None),
    "window wider than the sequence": (1, 2, 2, 19, 19, 16, 16, 64, 4, True, None),
}


def _inputs(case, seed=0):
    b, h, hk, tq, tk, d, dv, window, sinks, use_sink, n = case
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in [(b, h, tq, d), (b, hk, tk, d), (b, hk, tk, dv)])
    sink = rng.standard_normal(h).astype(np.float32) if use_sink else None
    do = rng.standard_normal((b, h, tq, dv)).astype(np.float32)
    return q, k, v, sink, do, d ** -0.5, window, sinks, n


def _reference(q, k, v, sink, do, scale, window, sinks, n):
    """(o, lse, dq, dk, dv, dsink) of ascend_ops.reference (MindSpore, PyNative) for <o, do>."""
    kv_len = None if n is None else ms.Tensor([n], ms.int32)
    t = [ms.Tensor(x) for x in (q, k, v)] + ([ms.Tensor(sink)] if sink is not None else [])

    def loss(q, k, v, *s):
        o, _ = attention_reference(q, k, v, s[0] if s else None, scale, window, sinks, kv_len)
        return (o * ms.Tensor(do)).sum()

    o, lse = attention_reference(*t[:3], t[3] if sink is not None else None, scale, window, sinks, kv_len)
    grads = ms.grad(loss, grad_position=tuple(range(len(t))))(*t)
    out = [o, lse, *grads] + ([] if sink is not None else [None])
    return [None if x is None else x.asnumpy() for x in out]


@pytest.mark.parametrize("name", CASES)
def test_gateswa_kernel_forward_and_backward_equal_the_reference(name):
    q, k, v, sink, do, scale, window, sinks, n = _inputs(CASES[name])
    tt = [torch.from_numpy(x) for x in (q, k, v)]
    ts = None if sink is None else torch.from_numpy(sink)
    o, lse = attention.forward(*tt, ts, scale, window, sinks, n)
    got = [o, lse, *attention.backward(*tt, ts, o, lse, torch.from_numpy(do), scale, window, sinks, n)]
    want = _reference(q, k, v, sink, do, scale, window, sinks, n)
    for what, g, w in zip(("o", "lse", "dq", "dk", "dv", "dsink"), got, want):
        if w is None:
            assert g is None
            continue
        if what == "dk" or what == "dv":  # slots past the valid keys get no gradient
            w = w[:, :, : (n or w.shape[2])]
            g = g[:, :, : (n or g.shape[2])]
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-4, atol=2e-5, err_msg=f"{name}: {what}")


@pytest.mark.parametrize("b, h, t, n, dl, dr, splits", [
    (2, 20, 50, 37, 40, 16, None),  # heads over two head blocks (16 + 4), latent not a power of two
    (1, 4, 64, 64, 32, 16, 3),      # a full cache over three splits
    (1, 3, 40, 5, 32, 8, 4),        # more splits than keys: empty splits merge with weight 0
])
def test_mla_latent_decode_kernel_equals_the_reference(b, h, t, n, dl, dr, splits):
    """Absorbed MLA: one shared KV head of [latent, rope key], values = the latent."""
    rng = np.random.default_rng(1)
    ql, qr = rng.standard_normal((b, h, dl)).astype(np.float32), rng.standard_normal((b, h, dr)).astype(np.float32)
    c, r = rng.standard_normal((b, t, dl)).astype(np.float32), rng.standard_normal((b, t, dr)).astype(np.float32)
    o, lse = mla_decode.decode(*(torch.from_numpy(x) for x in (ql, qr, c, r)), 0.1, n, splits=splits)
    q, k = np.concatenate([ql, qr], -1)[:, :, None], np.concatenate([c, r], -1)[:, None]
    ro, rl = attention_reference(ms.Tensor(q), ms.Tensor(k), ms.Tensor(c[:, None]), None, 0.1, 0, 0,
                                 ms.Tensor([n], ms.int32))
    np.testing.assert_allclose(o.numpy(), ro.asnumpy()[:, :, 0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lse.numpy(), rl.asnumpy()[:, :, 0], rtol=1e-5, atol=1e-5)


def _compile_check(*args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", "ascend_ops.triton.compile_check", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_every_kernel_compiles_toward_the_910b_as_far_as_the_toolchain_goes():
    proc = _compile_check()
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(lines) == 4 and all(ln.startswith("PASS") and "hivmc" in ln for ln in lines), proc.stdout


def test_the_compile_check_fails_on_a_tile_that_overflows_the_ub():
    proc = _compile_check("--tile-scale", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    forward = next(ln for ln in proc.stdout.splitlines() if "gateswa forward" in ln)
    assert forward.startswith("FAIL") and "ub overflow, requires" in forward and "1572864 bits available" in forward


def test_the_triton_face_decodes_absorbed_mla_with_the_latent_kernel(monkeypatch):
    """FusedAttention(latent=dl) on the triton face sends a one-row query against the shared [latent, rope]
    cache to the latent decode kernel; the result is the contract's (the reference, the cpu face)."""
    from ascend_ops import FusedAttention
    rng = np.random.default_rng(2)
    b, h, t, dl, dr, n = 1, 20, 48, 32, 16, 35
    q = ms.Tensor(rng.standard_normal((b, h, 1, dl + dr)).astype(np.float32))
    k = ms.Tensor(rng.standard_normal((b, 1, t, dl + dr)).astype(np.float32))
    kv_len = ms.Tensor([n], ms.int32)
    want = attention_reference(q, k, k[..., :dl], None, 0.2, 0, 0, kv_len)[0].asnumpy()
    calls, decode = [], mla_decode.decode
    monkeypatch.setattr(mla_decode, "decode", lambda *a, **kw: calls.append(a[0].shape) or decode(*a, **kw))
    got = FusedAttention(0.2, face="triton", latent=dl)(q, k, None, None, kv_len).asnumpy()
    assert calls == [(b, h, dl)]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_an_mla_student_decodes_the_same_on_the_triton_face(hf_models, rng, monkeypatch):
    """Cached greedy decode of a converted MLA student (chunked prefill on the GateSWA kernel, then the latent
    kernel per token, in compiled graphs) gives the CPU face's tokens and logits."""
    from mindedit.edit import MLAConfig, edit_model
    from mindedit.eval.generation import greedy_generate
    from mindedit.models import from_pretrained
    prompt, calib = rng.integers(0, 256, (1, 21)), rng.integers(0, 256, (1, 64))
    out = {}
    for face in ("cpu", "triton"):
        monkeypatch.setenv("MINDEDIT_ATTENTION", face)
        student = edit_model(from_pretrained(hf_models["llama"][1]), MLAConfig(kv_lora_rank=24, qk_rope_head_dim=8),
                             calib)
        out[face] = greedy_generate(student, prompt, 6, keep_logits=True)
    assert out["triton"]["tokens"].tolist() == out["cpu"]["tokens"].tolist()
    np.testing.assert_allclose(out["triton"]["logits"], out["cpu"]["logits"], rtol=1e-4, atol=1e-4)
