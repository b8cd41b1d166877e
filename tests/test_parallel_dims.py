"""ParallelDims: layouts checked against real model shapes with the field named, and rank groups that partition
the world the way the layout promises, and the `plan` memory estimate (pure Python: no MindSpore compute)."""
import pytest

from mindedit.config import load_job_config
from mindedit.parallel import ParallelDims, ParallelError
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


@pytest.fixture(scope="module")
def shapes():
    return {name: load_job_config(CONFIGS / f"{name}.yaml").model_shapes()
            for name in ("qwen3_8b_mla", "qwen3_30b_a3b_gateswa")}


@pytest.mark.parametrize("dims, model, message", [
    (ParallelDims(tp=3), "qwen3_8b_mla", r"tp=3: does not divide num_attention_heads=32"),
    (ParallelDims(tp=0), "qwen3_8b_mla", r"tp=0: expected a positive integer"),
    (ParallelDims(pp=37), "qwen3_8b_mla", r"pp=37: more pipeline stages than num_hidden_layers=36"),
    (ParallelDims(dp=2, ep=2), "qwen3_8b_mla", r"ep=2: the model has no experts"),
    (ParallelDims(dp=2, tp=2, ep=8), "qwen3_30b_a3b_gateswa", r"ep=8: does not divide dp\*tp=4"),
    (ParallelDims(dp=3, ep=3), "qwen3_30b_a3b_gateswa", r"ep=3: does not divide num_experts=128"),
    (ParallelDims(tp=64), "qwen3_30b_a3b_gateswa", r"tp=64: does not divide num_attention_heads=32"),
])
def test_impossible_layouts_are_named(shapes, dims, model, message):
    with pytest.raises(ParallelError, match=message):
        dims.validate(shapes[model])


def test_world_size_must_match(shapes):
    with pytest.raises(ParallelError, match=r"dp\*tp\*pp = 2\*2\*2 = 8, but 4 processes"):
        ParallelDims(dp=2, tp=2, pp=2).validate(shapes["qwen3_8b_mla"], world=4)
    # 8 KV heads over tp=16: replicated in pairs, allowed
    ParallelDims(tp=16).validate(shapes["qwen3_8b_mla"], world=16)


@pytest.mark.parametrize("dims", [ParallelDims(2, 2, 2, 4), ParallelDims(4, 2, 1, 8), ParallelDims(1, 4, 2, 2),
                                  ParallelDims(2, 1, 3, 2)])
def test_groups_partition_the_world(dims):
    world = range(dims.world)
    for kind in ("tp", "dp", "pp", "ep"):
        groups = {tuple(getattr(dims, f"{kind}_group")(r)) for r in world}
        assert sorted(r for g in groups for r in g) == list(world), kind  # every rank in exactly one group
        assert all(len(g) == getattr(dims, kind) for g in groups), kind
        for g in groups:  # members differ only in their own coordinate, which runs 0..size-1
            coords = [dims.coords(r) for r in g]
            assert sorted(c[kind] for c in coords) == list(range(len(g))), kind
            others = {k for k in ("tp", "dp", "pp") if k != kind and (kind != "ep" or k == "pp")}
            assert all(c[k] == coords[0][k] for c in coords for k in others), kind
    assert all(dims.rank(**{k: dims.coords(r)[k] for k in ("dp", "tp", "pp")}) == r for r in world)
    assert dims.tp_group(0) == list(range(dims.tp))  # tensor parallel on neighbouring devices


def test_stage_layers_are_contiguous_and_cover_the_model():
    dims = ParallelDims(pp=4)
    stages = [dims.stage_layers(30, s) for s in range(4)]
    assert [len(s) for s in stages] == [8, 8, 7, 7]
    assert [i for s in stages for i in s] == list(range(30))


@pytest.mark.parametrize("name", ["qwen3_8b_mla", "qwen3_8b_gateswa", "qwen3_30b_a3b_mla", "qwen3_30b_a3b_gateswa"])
def test_plan_fits_the_shipped_qwen3_layouts_on_910b(name):
    from mindedit.parallel.plan import estimate, parse_bytes
    job = load_job_config(CONFIGS / f"{name}.yaml")
    assert job.dims.world in (8, 16, 24, 32)  # 1-4 servers of 8 devices
    plan = estimate(job, parse_bytes("64GiB"))
    for stage, s in plan["stages"].items():
        assert s["fits"], (name, stage, s)
        assert 5 * 2 ** 30 < s["total"] < 64 * 2 ** 30
        # the parts add up and nothing is negative
        assert all(v >= 0 for v in s["terms"].values()) and s["total"] >= sum(s["terms"].values())


def test_plan_refuses_an_impossible_layout_naming_the_largest_term():
    import subprocess
    import sys
    # Qwen3-30B-A3B fits one server at dp=2 tp=4 pp=1 (42 / 47 GiB); at dp=1 tp=8 ep=8 a micro-batch holds two
    # sequences, and stage 2's activations no longer fit
    proc = subprocess.run([sys.executable, "-m", "mindedit", "plan", "--config", "configs/qwen3_30b_a3b_mla.yaml",
                           "--set", "parallel.pp=1", "--set", "parallel.dp=1", "--set", "parallel.tp=8",
                           "--set", "parallel.ep=8",
                           "--set", "cluster.nodes=[{host: 10.0.0.1, devices: [0,1,2,3,4,5,6,7]}]"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "stage2 needs" in proc.stderr and "the largest term is activations" in proc.stderr
    # more devices of the same kind make it fit; a smaller device does not
    from mindedit.parallel.plan import estimate, parse_bytes
    job = load_job_config(CONFIGS / "qwen3_8b_mla.yaml")
    assert not estimate(job, parse_bytes("16GiB"))["stages"]["stage2"]["fits"]
    with pytest.raises(ValueError, match="--device-memory '64 parsecs'"):
        parse_bytes("64 parsecs")


def test_mean_keys_counts_the_visible_keys_of_the_attention_contract():
    import numpy as np
    from mindedit.parallel.plan import mean_keys
    for seq, window, sinks in [(37, 0, 0), (37, 8, 0), (37, 8, 3), (5, 8, 3), (64, 16, 4)]:
        p, j = np.arange(seq)[:, None], np.arange(seq)[None, :]  # ascend_ops.FusedAttention's visibility rule
        visible = (j <= p) & ((window == 0) | (p - j < window) | (j < sinks))
        assert mean_keys(seq, window, sinks) == pytest.approx(visible.sum(1).mean(), rel=1e-12), (seq, window, sinks)


def test_plan_flops_per_token_by_hand():
    """Qwen3-8B teacher forward at 4,096 tokens from its published shapes; Qwen3-30B-A3B's experts as dispatched:
    the router and top-8 experts per token, with or without expert parallelism."""
    from mindedit.parallel.plan import stage_flops
    job = load_job_config(CONFIGS / "qwen3_8b_mla.yaml")
    h, n, nk, d, inter, layers, vocab = 4096, 32, 8, 128, 12288, 36, 151936
    attn_params = h * n * d * 2 + h * nk * d * 2 + 2 * d  # q, o, k, v, q/k norms
    core = 2 * n * (d + d) * (4096 + 1) / 2  # causal: (T + 1) / 2 keys per query on average
    by_hand = layers * (2 * (attn_params + 3 * h * inter) + core) + 2 * h * vocab
    f = stage_flops(job)
    assert f["stage1"]["teacher forward"] == pytest.approx(by_hand, rel=1e-12)
    assert f["stage1"]["student backward"] == pytest.approx(2 * f["stage1"]["student forward"], rel=1e-12)
    moe = load_job_config(CONFIGS / "qwen3_30b_a3b_gateswa.yaml", ["parallel.ep=1"])
    gathered = load_job_config(CONFIGS / "qwen3_30b_a3b_gateswa.yaml", ["parallel.ep=4"])
    h, n, nk, layers = 2048, 32, 4, 48
    attn_params = h * n * d * 2 + h * nk * d * 2 + 2 * d
    routed = 2 * h * (128 + 8 * 3 * 768)  # router + 8 experts
    core = 2 * n * (d + d) * (4096 + 1) / 2  # the teacher: every layer causal
    by_hand = layers * (2 * attn_params + routed + core) + 2 * h * vocab
    for job in (moe, gathered):
        assert stage_flops(job)["stage1"]["teacher forward"] == pytest.approx(by_hand, rel=1e-12)


def test_plan_counts_the_attention_the_face_keeps():
    """The reference face keeps [T, T] float32 scores and probabilities per local head and layer (the issue's ~1 GiB
    per sequence per layer for Qwen3-30B-A3B's 8 local heads at 4,096 tokens); the fused faces O(T)."""
    from mindedit.parallel.plan import estimate, parse_bytes
    job = load_job_config(CONFIGS / "qwen3_30b_a3b_gateswa.yaml")
    fused, ref = (estimate(job, parse_bytes("64GiB"), face) for face in ("ascend", "reference"))
    assert fused["face"] == "ascend" and ref["face"] == "reference"
    key = "activations (4096 tokens per micro-batch)"
    layers, tokens, heads = fused["layers_on_stage"], 4096, 32 // 4
    sinks = 4 * 5 / 6  # 4 sink tokens on the 5 sliding layers of each 6 (pattern SSSSSF) of this stage
    fused_stats = layers * tokens * heads * (8 * 4 * 2 + sinks * 8)
    by_hand = layers * tokens * heads * 4096 * 4 * 2 - fused_stats
    assert ref["stages"]["stage2"]["terms"][key] - fused["stages"]["stage2"]["terms"][key] == \
        pytest.approx(by_hand, rel=1e-9)
    assert by_hand / layers / 2 ** 30 == pytest.approx(1.0, abs=0.01)  # ~1 GiB per sequence and layer
    assert fused["stages"]["stage1"]["fits"] and not ref["stages"]["stage1"]["fits"]  # 4 sequences: ~4 GiB a layer
    with pytest.raises(ValueError, match="--face 'triton'"):
        estimate(job, parse_bytes("64GiB"), "triton")


def test_plan_prints_the_face_flops_and_time():
    import json
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "mindedit", "plan", "--config", "configs/qwen3_8b_gateswa.yaml",
                           "--mfu", "0.5"], cwd=REPO, capture_output=True, text=True, check=True)
    out = proc.stdout
    assert "attention face ascend" in out and "GFLOP per token: teacher forward" in out
    plan = json.loads(out.strip().splitlines()[-1])
    for name, s in plan["stages"].items():  # tokens x FLOPs / (devices x peak x utilisation x busy)
        f = sum(s["flops_per_token"].values())
        assert s["hours"] * 3600 == pytest.approx(s["tokens"] * f / (8 * 280e12 * 0.5 * s["pipeline_busy"]))
        assert f"~{s['hours']:.1f} h" in out
