"""The sparse MoE: the grouped matmul (CPU kernel) against its reference, and the sparse block (tokens sorted by
expert, each expert on its own rows) against every expert on every token, forward and every gradient."""
import numpy as np
import pytest
import mindspore as ms

from ascend_ops import GroupedMatmul


def test_grouped_matmul_matches_reference_forward_and_backward(rng):
    e, n, d_in, d_out = 5, 23, 20, 12
    offsets = ms.Tensor(np.array([0, 4, 4, 13, 14, 23], np.int32))  # expert 1 gets no rows
    x = ms.Tensor(rng.standard_normal((n, d_in)).astype(np.float32))
    w = ms.Tensor(rng.standard_normal((e, d_out, d_in)).astype(np.float32))
    dy = ms.Tensor(rng.standard_normal((n, d_out)).astype(np.float32))
    cpu, ref = GroupedMatmul("cpu"), GroupedMatmul("reference")
    np.testing.assert_allclose(cpu(x, w, offsets).asnumpy(), ref(x, w, offsets).asnumpy(), rtol=0, atol=1e-5)
    by_hand = np.concatenate([x.asnumpy()[a:b] @ w.asnumpy()[i].T for i, (a, b) in
                              enumerate(zip(offsets.asnumpy()[:-1], offsets.asnumpy()[1:]))])
    np.testing.assert_allclose(cpu(x, w, offsets).asnumpy(), by_hand, rtol=0, atol=1e-5)
    grads = [ms.grad(lambda a, b: (g(a, b, offsets) * dy).sum(), grad_position=(0, 1))(x, w) for g in (cpu, ref)]
    for a, b, name in zip(*grads, ("dx", "dw")):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=0, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("norm_topk_prob", [True, False])
@pytest.mark.parametrize("ties", [False, True])
def test_sparse_moe_equals_every_expert_on_every_token(norm_topk_prob, ties, rng):
    from dataclasses import replace
    from mindedit.data.assets import TINY_QWEN3_MOE
    from mindedit.models import ModelConfig
    from mindedit.models.qwen3 import SparseMoE
    cfg = replace(ModelConfig.from_hf_dict(dict(TINY_QWEN3_MOE, vocab_size=64), "tiny"), num_experts=6,
                  num_experts_per_tok=3, norm_topk_prob=norm_topk_prob)
    moe = SparseMoE(cfg, ms.float32)
    for name, p in moe.parameters_and_names():
        p.set_data(ms.Tensor(rng.standard_normal(p.shape).astype(np.float32) * 0.1))
    if ties:  # two experts with the same router row: top-k must break the tie the same way in both paths
        w = moe.gate.weight.asnumpy().copy()
        w[4] = w[1]
        moe.gate.weight.set_data(ms.Tensor(w))
    x = ms.Tensor(rng.standard_normal((2, 9, cfg.hidden_size)).astype(np.float32))
    dy = ms.Tensor(rng.standard_normal((2, 9, cfg.hidden_size)).astype(np.float32))
    params = moe.trainable_params()

    def loss(path):
        return lambda x: (path(x) * dy).sum()
    sparse, dense = moe(x).asnumpy(), moe.all_experts(x).asnumpy()
    np.testing.assert_allclose(sparse, dense, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ms.jit(moe.construct)(x).asnumpy(), dense, rtol=0, atol=1e-6)
    g_sparse = ms.grad(loss(moe), grad_position=0, weights=params)(x)
    g_dense = ms.grad(loss(moe.all_experts), grad_position=0, weights=params)(x)
    np.testing.assert_allclose(g_sparse[0].asnumpy(), g_dense[0].asnumpy(), rtol=0, atol=1e-5, err_msg="dx")
    for p, a, b in zip(params, g_sparse[1], g_dense[1]):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=0, atol=1e-5, err_msg=p.name)
