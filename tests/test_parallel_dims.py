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
    proc = subprocess.run([sys.executable, "-m", "mindedit", "plan", "--config", "configs/qwen3_30b_a3b_mla.yaml",
                           "--set", "parallel.pp=1",
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
