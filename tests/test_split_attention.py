"""The 910B attention paths on the CPU, against the plain-ops reference: the decomposition (ascend_ops.split: band
part + sink tokens + sink logit merged by softmax statistics, backward with the merged statistics, v padded to q's
head size) with the CPU kernel as its band part, and the Triton-Ascend kernel's face (ascend_ops.triton, under
Triton's interpreter); forward and every gradient, every mask, GQA, Dv != D, decode steps and partly filled
caches, PyNative and graph mode; and whole converted models on each face against the CPU face."""
import numpy as np
import pytest
import mindspore as ms

from ascend_ops import FusedAttention
from ascend_ops.reference import attention_reference

CASES = [
    # B, H, Hk, Tq, Tk, D, Dv, window, sink_tokens, sink_logit, kv_len
    (2, 4, 2, 37, 37, 16, 16, 0, 0, False, None),   # causal: the band part alone
    (2, 4, 2, 37, 37, 16, 16, 0, 0, True, None),    # + the sink logit
    (1, 6, 3, 70, 100, 24, 8, 16, 3, True, None),   # band + sink tokens + logit, Dv != D (padded), queries last
    (2, 2, 1, 1, 50, 8, 8, 10, 2, True, 37),        # a decode step against a partly filled cache
    (1, 3, 3, 130, 130, 64, 64, 33, 0, False, None),
    (1, 2, 2, 200, 200, 40, 24, 64, 4, False, None),
    (1, 4, 2, 16, 80, 16, 16, 8, 2, True, 48),      # a prefill chunk at positions 32..47 of a fixed-capacity cache
    (1, 2, 1, 12, 12, 8, 8, 20, 2, False, None),    # the window covers everything: the sink piece is empty
]


def tensors(rng, b, h, hk, tq, tk, d, dv):
    t = lambda *s: ms.Tensor(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    return t(b, h, tq, d), t(b, hk, tk, d), t(b, hk, tk, dv), t(h), t(b, h, tq, dv)


@pytest.mark.parametrize("face", ["split", "triton"])
@pytest.mark.parametrize("case", CASES)
def test_split_and_triton_faces_match_reference_forward_and_backward(case, face, rng):
    b, h, hk, tq, tk, d, dv, window, sink_tokens, use_sink, kv_len = case
    q, k, v, sink, w = tensors(rng, b, h, hk, tq, tk, d, dv)
    n = None if kv_len is None else ms.Tensor(np.array([kv_len], np.int32))
    cell = FusedAttention(0.3, window, sink_tokens, use_sink, face=face)

    def split(q, k, v, s):
        return (cell(q, k, v, s if use_sink else None, n) * w).sum()

    def reference(q, k, v, s):
        return (attention_reference(q, k, v, s if use_sink else None, 0.3, window, sink_tokens, n)[0] * w).sum()

    o = cell(q, k, v, sink if use_sink else None, n).asnumpy()
    o_ref = attention_reference(q, k, v, sink if use_sink else None, 0.3, window, sink_tokens, n)[0].asnumpy()
    assert np.isfinite(o).all()
    np.testing.assert_allclose(o, o_ref, rtol=0, atol=2e-5)
    np.testing.assert_allclose(ms.jit(cell.construct)(q, k, v, sink if use_sink else None, n).asnumpy(), o, atol=1e-6)
    g = ms.grad(split, grad_position=(0, 1, 2, 3))(q, k, v, sink)
    g_ref = ms.grad(reference, grad_position=(0, 1, 2, 3))(q, k, v, sink)
    for name, a, r in zip(["dq", "dk", "dv", "dsink"], g, g_ref):
        if name == "dsink" and not use_sink:
            continue
        assert np.isfinite(a.asnumpy()).all(), name
        np.testing.assert_allclose(a.asnumpy(), r.asnumpy(), rtol=0, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("face", ["split", "triton"])
@pytest.mark.parametrize("kind", ["gateswa", "mla"])
def test_converted_models_on_the_split_and_triton_faces_equal_the_cpu_face(hf_models, kind, face, rng, monkeypatch):
    """Logits of a whole student and the gradients of its stage-1 loss: the split or triton face (built with
    MINDEDIT_ATTENTION) against the CPU face, on the same weights."""
    from mindedit.distill.stage1 import Stage1Loss
    from mindedit.edit import GateSWAConfig, MLAConfig, edit_model
    from mindedit.edit.surgery import own_parameters
    from mindedit.models import from_pretrained
    target = (GateSWAConfig(window=8, sink_tokens=2, sink_logit=True, pattern="SF") if kind == "gateswa"
              else MLAConfig(kv_lora_rank=24, qk_rope_head_dim=8))
    calib, ids = rng.integers(0, 256, (1, 64)), ms.Tensor(rng.integers(0, 256, (2, 40)), ms.int32)
    results = {}
    for built in ("cpu", face):
        monkeypatch.setenv("MINDEDIT_ATTENTION", built)
        teacher = from_pretrained(hf_models["qwen3"][1])
        student = edit_model(teacher, target, calib)
        for name, p in student.parameters_and_names():  # sink logits off their init, so they matter
            if name.endswith("sinks"):
                p.set_data(ms.Tensor(np.linspace(-1, 1, p.shape[0]).astype(np.float32)))
        params = [p for n, p in own_parameters(student, teacher).items() if "self_attn" in n and p.requires_grad]
        loss = Stage1Loss(teacher, student)
        grads = ms.grad(lambda i: loss(i)[0], None, params)(ids)
        results[built] = (student(ids).asnumpy(), [g.asnumpy() for g in grads])
    np.testing.assert_allclose(results[face][0], results["cpu"][0], rtol=0, atol=1e-4)
    for a, b in zip(results[face][1], results["cpu"][1]):  # float noise: both faces differ from the reference
        # by ~5e-5 on gradients up to ~8 (MLA: summation orders of the kernels)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5 * max(1.0, np.abs(b).max()))
