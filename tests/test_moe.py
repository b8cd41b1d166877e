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


@pytest.mark.parametrize("ep", [2, 3])
def test_expert_parallel_dispatch_sums_to_every_expert(ep, rng):
    """The EP dispatch's decomposition in one process: each EP rank's block (its consecutive experts' rows sorted
    first, every other row zero) summed over the ranks equals every expert on every token, forward and every
    gradient (the collectives themselves are one-rank identities here; tests/test_parallel.py runs them)."""
    from dataclasses import replace
    from mindedit.data.assets import TINY_QWEN3_MOE
    from mindedit.models import ModelConfig
    from mindedit.models.qwen3 import SparseMoE
    from mindedit.parallel.comm import SINGLE
    from mindedit.parallel.expert import ExpertParallelMoE
    cfg = replace(ModelConfig.from_hf_dict(dict(TINY_QWEN3_MOE, vocab_size=64), "tiny"), num_experts=6,
                  num_experts_per_tok=2)
    moe = SparseMoE(cfg, ms.float32)
    for name, p in moe.parameters_and_names():
        p.set_data(ms.Tensor(rng.standard_normal(p.shape).astype(np.float32) * 0.1))
    per = cfg.num_experts // ep
    ranks = [ExpertParallelMoE.shard(moe, tuple(range(r * per, (r + 1) * per)), SINGLE, SINGLE) for r in range(ep)]
    x = ms.Tensor(rng.standard_normal((2, 9, cfg.hidden_size)).astype(np.float32))
    dy = ms.Tensor(rng.standard_normal((2, 9, cfg.hidden_size)).astype(np.float32))
    params = moe.trainable_params()

    def summed(x):
        return sum(r(x) for r in ranks)
    np.testing.assert_allclose(summed(x).asnumpy(), moe.all_experts(x).asnumpy(), rtol=0, atol=1e-6)
    for r in ranks:  # each rank alone: only the tokens that chose one of its experts get an output
        chose = np.isin(moe.route(x)[1].asnumpy(), r.local).any(-1)
        assert (np.abs(r(x).asnumpy()).sum(-1) > 0).tolist() == chose.tolist()
    g_ep = ms.grad(lambda x: (summed(x) * dy).sum(), grad_position=0, weights=params)(x)
    g_dense = ms.grad(lambda x: (moe.all_experts(x) * dy).sum(), grad_position=0, weights=params)(x)
    np.testing.assert_allclose(g_ep[0].asnumpy(), g_dense[0].asnumpy(), rtol=0, atol=1e-5, err_msg="dx")
    for p, a, b in zip(params, g_ep[1], g_dense[1]):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=0, atol=1e-5, err_msg=p.name)


def test_token_permute_keeps_cann_moe_token_permute_contract():
    """The plain-ops permutation (every device but Ascend) returns what ops.moe_token_permute documents: its
    docstring's example (tokens grouped by expert, sorted_indices = each token's row), and with top-k = 2 the
    (token, choice) pairs by expert, ties by flat index; unpermute is the weighted sum over each token's rows."""
    from ascend_ops import TokenPermute
    perm = TokenPermute(face="cpu")
    tokens = ms.Tensor(np.array([[1] * 3, [7] * 3, [2] * 3, [1] * 3, [2] * 3, [3] * 3], np.float32))
    rows, back = perm.permute(tokens, ms.Tensor(np.array([[5], [0], [3], [1], [2], [4]], np.int32)))
    assert rows.asnumpy()[:, 0].tolist() == [7, 1, 2, 2, 3, 1] and back.asnumpy().tolist() == [5, 0, 3, 1, 2, 4]
    x = ms.Tensor(np.arange(8, dtype=np.float32).reshape(4, 2))          # token t = [2t, 2t + 1]
    idx = ms.Tensor(np.array([[1, 0], [0, 2], [1, 2], [0, 1]], np.int32))  # flat: 1 0 0 2 1 2 0 1
    rows, back = perm.permute(x, idx)
    # expert 0: flat 1 (t0), 2 (t1), 6 (t3); expert 1: flat 0 (t0), 4 (t2), 7 (t3); expert 2: flat 3 (t1), 5 (t2)
    assert (rows.asnumpy()[:, 0] // 2).tolist() == [0, 1, 3, 0, 2, 3, 1, 2]
    assert back.asnumpy().tolist() == [3, 0, 1, 6, 4, 7, 2, 5]
    w = np.array([[0.5, 0.25], [1, 2], [3, 0], [0.1, 0.2]], np.float32)
    out = perm.unpermute(rows * 10, back, ms.Tensor(w)).asnumpy()
    np.testing.assert_allclose(out, 10 * w.sum(1, keepdims=True) * x.asnumpy(), rtol=1e-6)
