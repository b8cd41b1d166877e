"""The pieces of training: AdamW against a numpy reference, the lr schedule, stage-2 losses, the trainable set,
checkpoint integrity (exports: tests/test_export.py)."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Parameter, mint, ops

from mindedit.distill.optim import AdamW, lr_at
from mindedit.distill.stage2 import HeadTerms, Stage2Loss
from mindedit.edit import GateSWAConfig, MLAConfig, edit_model
from mindedit.edit.surgery import own_parameters, untie
from mindedit.io import checkpoint
from mindedit.losses import token_kl
from mindedit.models import from_pretrained
from mindedit.parallel.tensor import Vocab


def test_adamw_matches_numpy_reference_with_clipping_and_accumulation(rng):
    w0, b0 = rng.normal(size=(3, 4)), rng.normal(size=4)
    w, b = Parameter(ms.Tensor(w0, ms.float32), name="w"), Parameter(ms.Tensor(b0, ms.float32), name="b")
    opt = AdamW([w, b], betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, clip=0.5)

    @ms.jit
    def micro(gw, gb):
        opt.accumulate((gw, gb))
        return gw

    ref = {"w": w0.copy(), "b": b0.copy()}
    m = {k: np.zeros_like(v) for k, v in ref.items()}
    v = {k: np.zeros_like(x) for k, x in ref.items()}
    for t in range(1, 4):
        grads = [(rng.normal(size=(3, 4)), rng.normal(size=4)) for _ in range(2)]  # two micro-batches
        for gw, gb in grads:
            micro(ms.Tensor(gw, ms.float32), ms.Tensor(gb, ms.float32))
        lr = 0.01 * t
        norm = float(opt.apply(ms.Tensor(lr, ms.float32), ms.Tensor(2.0, ms.float32)).asnumpy())
        g = {"w": (grads[0][0] + grads[1][0]) / 2, "b": (grads[0][1] + grads[1][1]) / 2}
        ref_norm = np.sqrt(sum((x ** 2).sum() for x in g.values()))
        assert norm == pytest.approx(ref_norm, rel=1e-5)
        scale = min(1.0, 0.5 / (ref_norm + 1e-6))
        step = lr * np.sqrt(1 - 0.95 ** t) / (1 - 0.9 ** t)
        for k in ref:
            gk = g[k] * scale
            m[k] = 0.9 * m[k] + 0.1 * gk
            v[k] = 0.95 * v[k] + 0.05 * gk * gk
            decay = 0.1 if k == "w" else 0.0  # matrices only
            ref[k] = ref[k] - step * m[k] / (np.sqrt(v[k]) + 1e-8) - lr * decay * ref[k]
        np.testing.assert_allclose(w.asnumpy(), ref["w"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b.asnumpy(), ref["b"], rtol=1e-5, atol=1e-6)
        assert not opt.acc[0].asnumpy().any()  # cleared for the next step


def test_adamw_row_relative_scales_each_rows_step_by_its_scale(rng):
    """row_relative: Adam's step, each row's scaled by min(1, RMS(row) / RMS(matrix)) of the weights before it;
    vectors and an all-zero matrix step as plain Adam."""
    w0 = rng.normal(size=(4, 6)) * np.array([[1.0], [1e-3], [2.0], [0.1]])  # rows four orders of magnitude apart
    b0 = rng.normal(size=6)
    w = Parameter(ms.Tensor(w0, ms.float32), name="w")
    b = Parameter(ms.Tensor(b0, ms.float32), name="b")
    z = Parameter(ms.Tensor(np.zeros((2, 3)), ms.float32), name="z")
    opt = AdamW([w, b, z], clip=0.0, row_relative=True)

    @ms.jit
    def micro(gw, gb, gz):
        opt.accumulate((gw, gb, gz))
        return gw

    ref = {"w": w0.copy(), "b": b0.copy(), "z": np.zeros((2, 3))}
    m = {k: np.zeros_like(x) for k, x in ref.items()}
    v = {k: np.zeros_like(x) for k, x in ref.items()}
    for t in range(1, 4):
        g = {"w": rng.normal(size=(4, 6)), "b": rng.normal(size=6), "z": rng.normal(size=(2, 3))}
        micro(*(ms.Tensor(g[k], ms.float32) for k in ("w", "b", "z")))
        opt.apply(ms.Tensor(0.01, ms.float32), ms.Tensor(1.0, ms.float32))
        step = 0.01 * np.sqrt(1 - 0.95 ** t) / (1 - 0.9 ** t)
        for k in ref:
            m[k] = 0.9 * m[k] + 0.1 * g[k]
            v[k] = 0.95 * v[k] + 0.05 * g[k] * g[k]
            update = step * m[k] / (np.sqrt(v[k]) + 1e-8)
            if ref[k].ndim == 2:
                rows = np.sqrt((ref[k] ** 2).mean(1, keepdims=True))
                whole = np.sqrt((ref[k] ** 2).mean())
                update = update * np.where(rows >= whole, 1.0, rows / max(whole, 1e-30))
            ref[k] = ref[k] - update
        for k, p in (("w", w), ("b", b), ("z", z)):
            np.testing.assert_allclose(p.asnumpy(), ref[k], rtol=1e-5, atol=1e-8)
    # the small row moved by about its own scale's share, not by the lr: plain Adam would move it ~0.03
    assert np.abs(w.asnumpy()[1] - w0[1]).max() < 1e-3
    # a model's worth of matrices compiles (past MindSpore's default call depth without the raised limit)
    many = [Parameter(ms.Tensor(np.ones((2, 2)), ms.float32), name=f"p{i}") for i in range(200)]
    big = AdamW(many, row_relative=True)
    big.apply(ms.Tensor(0.01, ms.float32), ms.Tensor(1.0, ms.float32))


def test_lr_schedule():
    assert [lr_at(s, 10, 1.0, 2) for s in (0, 1)] == [0.5, 1.0]
    assert lr_at(2, 10, 1.0, 2) == pytest.approx(1.0) and lr_at(10, 10, 1.0, 2) == pytest.approx(0.1)
    assert lr_at(6, 10, 1.0, 2, "linear") == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(6, 10, 1.0, 2, "cosine") == pytest.approx(0.1 + 0.9 * 0.5)  # the cosine midpoint
    # off the midpoint the cosine is not the line: a quarter of the way, 0.1 + 0.9 * (1 + cos(pi / 4)) / 2
    assert lr_at(4, 10, 1.0, 2, "cosine") == pytest.approx(0.1 + 0.9 * (1 + np.cos(np.pi / 4)) / 2)
    assert lr_at(4, 10, 1.0, 2, "linear") == pytest.approx(0.1 + 0.9 * 0.75)
    assert lr_at(7, 10, 1.0, 2, "constant") == 1.0


def compiled(loss):
    """The losses run in graph mode in training (mint.log_softmax has no PyNative CPU kernel)."""
    def run(ids):
        return loss(ids)
    return ms.jit(run)


@pytest.mark.parametrize("kl", ["forward", "reverse", "both"])
def test_stage2_loss_is_zero_for_an_exact_student_and_positive_otherwise(hf_models, rng, kl):
    teacher = from_pretrained(hf_models["qwen3"][1])
    ids = ms.Tensor(rng.integers(0, 256, (2, 24)), ms.int32)
    exact = edit_model(teacher, GateSWAConfig(window=32, sink_tokens=0, pattern="SF"))  # context fits the window
    total, terms = compiled(Stage2Loss(teacher, exact, kl, 2.0, [0, 1], 0.5))(ids)
    assert abs(float(total.asnumpy())) < 1e-5 and np.abs(terms.asnumpy()).max() < 1e-5
    student = edit_model(teacher, MLAConfig(kv_lora_rank=8, qk_rope_head_dim=8), rng.integers(0, 256, (1, 32)))
    total, terms = compiled(Stage2Loss(teacher, student, kl, 2.0, [0, 1], 0.5, ce_weight=0.25))(ids)
    kl_v, feat, ce = terms.asnumpy()
    assert kl_v > 1e-4 and feat > 1e-4 and ce > 1.0
    assert float(total.asnumpy()) == pytest.approx(kl_v + 0.5 * feat + 0.25 * ce, rel=1e-5)


def plain_head_terms(h_t, h_s, w_t, w_s, ids, kind, tau):
    """The terms HeadTerms computes, from whole [B, T, V] logits and autodiff (the reference)."""
    lt = ops.log_softmax(mint.matmul(h_t, w_t.T) / tau, -1)
    ls = ops.log_softmax(mint.matmul(h_s, w_s.T) / tau, -1)
    l1 = ops.log_softmax(mint.matmul(h_s, w_s.T), -1)[:, :-1]
    ce = -mint.gather(l1, -1, ids[:, 1:].unsqueeze(-1)).mean()
    return ops.stack((token_kl(lt, ls, kind).mean() * tau * tau, ce))


@pytest.mark.parametrize("kind", ["forward", "reverse", "both"])
def test_head_terms_in_chunks_equal_whole_logits_value_and_gradients(rng, kind):
    """Chunks of 5 over 2 x 7 positions (5 + 5 + 4), temperature 2, CE on, the KL and the CE weighted apart: the
    closed-form gradients (computed in the forward) equal autodiff through whole logits, for the student's hidden
    states and head."""
    h_t, h_s = (ms.Tensor(rng.normal(size=(2, 7, 6)), ms.float32) for _ in range(2))
    w_t, w_s = (ms.Tensor(rng.normal(size=(11, 6)), ms.float32) for _ in range(2))
    ids = ms.Tensor(rng.integers(0, 11, (2, 7)), ms.int32)
    coef = ms.Tensor([0.7, 0.3], ms.float32)
    chunked = HeadTerms(Vocab(), kind, 2.0, ce=True, rows=5)

    def ours(h_t, h_s, w_t, w_s, ids):
        return (chunked(h_t, h_s, w_t, w_s, ids)[0] * coef).sum()

    def reference(h_t, h_s, w_t, w_s, ids):
        return (plain_head_terms(h_t, h_s, w_t, w_s, ids, kind, 2.0) * coef).sum()

    @ms.jit
    def both(h_t, h_s, w_t, w_s, ids):
        return (ms.value_and_grad(ours, (1, 3))(h_t, h_s, w_t, w_s, ids),
                ms.value_and_grad(reference, (1, 3))(h_t, h_s, w_t, w_s, ids))

    (value, grads), (ref_value, ref_grads) = both(h_t, h_s, w_t, w_s, ids)
    assert float(value.asnumpy()) == pytest.approx(float(ref_value.asnumpy()), rel=1e-5)
    for g, r in zip(grads, ref_grads):
        assert np.abs(r.asnumpy()).max() > 1e-3
        np.testing.assert_allclose(g.asnumpy(), r.asnumpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", ["qwen3", "qwen3_moe"])  # (a MoE block holds a kernel that cannot be deep-copied)
def test_untie_all_trains_copies_and_never_the_teacher(hf_models, rng, arch):
    teacher = from_pretrained(hf_models[arch][1])
    student = edit_model(teacher, GateSWAConfig(window=4, sink_tokens=0, pattern="SF"))
    assert all("self_attn" in n for n in own_parameters(student, teacher))
    untie(student, teacher, "all")
    own = own_parameters(student, teacher)
    assert len(own) == len(dict(student.parameters_and_names()))  # nothing shared any more
    assert all(p.name == "student." + n for n, p in own.items())
    ids = ms.Tensor(rng.integers(0, 256, (1, 16)), ms.int32)
    before_t, before_s = teacher(ids).asnumpy(), student(ids).asnumpy()
    for p in own.values():
        p.set_data(p.value() * 1.5)
    np.testing.assert_array_equal(teacher(ids).asnumpy(), before_t)
    assert np.abs(student(ids).asnumpy() - before_s).max() > 1e-3
    with pytest.raises(ValueError, match="trainable='mlp': expected one of"):
        untie(student, teacher, "mlp")


def test_corrupt_or_truncated_checkpoints_are_skipped(tmp_path):
    w = {"layer.weight": Parameter(ms.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3)), name="x")}
    o = {"adam_step": Parameter(ms.Tensor(0, ms.int32), name="adam_step")}
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, f"stage1-{step:06d}", {"layer.weight": np.full((2, 3), step, np.float32)},
                        {"adam_step": np.array(3, np.int32)}, {"stage": "stage1", "step": step}, keep=3)
    newest = tmp_path / "stage1-000003/weights.safetensors"
    newest.write_bytes(newest.read_bytes()[:-7])  # truncated
    (tmp_path / "stage1-000002/state.json").write_text("{not json")
    warnings = []
    path, state = checkpoint.latest(tmp_path, warnings.append)
    assert state["step"] == 1 and path.name == "stage1-000001"
    assert "stage1-000003" in warnings[0] and "does not match its sha256" in warnings[0]
    assert "stage1-000002" in warnings[1] and "state.json unreadable" in warnings[1]
    checkpoint.load(path, w, o)
    assert (w["layer.weight"].asnumpy() == 1).all() and int(o["adam_step"].asnumpy()) == 3
    with pytest.raises(ValueError, match="no tensor 'other'"):
        checkpoint.load(path, {"other": w["layer.weight"]}, {})
    assert not list(tmp_path.glob(".*"))  # no temp directories left behind


def test_half_precision_parameters_are_updated_through_fp32_master_weights():
    """The Ascend path (half-precision compute): tiny updates accumulate in the fp32 master copy instead of
    vanishing in rounding. float16 stands in for bfloat16, which has no CPU kernels (not even Identity)."""
    w = Parameter(ms.Tensor(np.ones((2, 2), np.float16)), name="w")
    opt = AdamW([w], clip=0.0)
    assert opt.master_weights and opt.master[0].dtype == ms.float32

    @ms.jit
    def micro(g):
        opt.accumulate((g,))
        return g

    for _ in range(20):  # 20 steps of 1e-4: each below float16's resolution at 1.0 (2^-10)
        micro(ms.Tensor(np.ones((2, 2), np.float32)))
        opt.apply(ms.Tensor(1e-4, ms.float32), ms.Tensor(1.0, ms.float32))
    master = opt.master[0].asnumpy()
    np.testing.assert_allclose(master, 1 - 20e-4, rtol=1e-5)
    np.testing.assert_allclose(w.asnumpy().astype(np.float32), master, atol=2 ** -10)
    assert w.asnumpy().astype(np.float32).max() < 1.0  # without masters every step would round back to 1.0
