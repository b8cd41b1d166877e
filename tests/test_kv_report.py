"""kv-report against hand arithmetic from the published shapes, and against the bytes the caches really hold."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mindedit.attention import cache_nbytes
from mindedit.config import load_job_config
from mindedit.errors import MindeditError
from mindedit.edit import GateSWAConfig, MLAConfig, edit_model
from mindedit.eval.kv import kv_report
from mindedit.models import from_pretrained

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def report(name, *contexts):
    proc = subprocess.run([sys.executable, "-m", "mindedit", "kv-report", "--config", str(CONFIGS / name),
                           "--context", *map(str, contexts)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "reduction" in proc.stdout  # the table
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_qwen3_8b_mla_by_hand():
    r = report("qwen3_8b_mla.yaml", 32768)
    assert r["teacher_bytes_per_token"] == 36 * 2 * 8 * 128 * 2          # layers x (k, v) x heads x dim x bf16
    assert r["student_bytes_per_token"] == 36 * (512 + 64) * 2
    assert r["contexts"][0]["reduction"] == pytest.approx(1 - 576 / 2048) and r["contexts"][0]["reduction"] >= 0.70


def test_qwen3_30b_a3b_mla_by_hand():
    r = report("qwen3_30b_a3b_mla.yaml", 32768)
    assert r["teacher_bytes_per_token"] == 48 * 2 * 4 * 128 * 2
    assert r["student_bytes_per_token"] == 48 * (256 + 32) * 2
    assert r["contexts"][0]["reduction"] == pytest.approx(1 - 288 / 1024) and r["contexts"][0]["reduction"] >= 0.70


@pytest.mark.parametrize("name, layers, kv_heads", [("qwen3_8b_gateswa.yaml", 36, 8),
                                                     ("qwen3_30b_a3b_gateswa.yaml", 48, 4)])
def test_gateswa_by_hand_at_32k(name, layers, kv_heads):
    r = report(name, 32768, 512)
    full, sliding = layers // 6, layers - layers // 6                   # pattern SSSSSF
    per_token = 2 * kv_heads * 128 * 2
    long, short = r["contexts"]
    assert long["teacher_bytes"] == layers * 32768 * per_token
    assert long["student_bytes"] == (full * 32768 + sliding * (1024 + 4)) * per_token
    assert long["reduction"] >= 0.80
    assert short["student_bytes"] == layers * 512 * per_token              # shorter than the window: no saving
    assert r["student_bytes_per_token"] == full * per_token


def test_report_matches_allocated_caches(hf_models, rng):
    """The formula counts what init_caches really allocates, for every cache kind."""
    teacher = from_pretrained(hf_models["qwen3"][1])
    cfg = teacher.config
    students = [edit_model(teacher, MLAConfig(kv_lora_rank=24, qk_rope_head_dim=8), rng.integers(0, 256, (1, 80))),
                edit_model(teacher, GateSWAConfig(window=8, sink_tokens=2, pattern="SF"))]
    for context in (6, 100):
        assert kv_report(cfg, students[0].target, [context], 4)["contexts"][0]["teacher_bytes"] == \
            cache_nbytes(teacher.init_caches(1, context))
        for s in students:
            assert kv_report(cfg, s.target, [context], 4)["contexts"][0]["student_bytes"] == \
                cache_nbytes(s.init_caches(1, context))


def test_bad_job_config_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS / "qwen3_8b_mla.yaml").read_text().replace("kv_lora_rank: 512", "kv_lora_rank: 99999"))
    with pytest.raises(MindeditError, match=r"bad\.yaml: target\.kv_lora_rank=99999"):
        load_job_config(bad)
    bad.write_text("model: {path: x}\ntarget: {kind: mla}\nstage9: {}\n")
    with pytest.raises(MindeditError, match=r"bad\.yaml: unknown section 'stage9'"):
        load_job_config(bad)
    bad.write_text("model: [1, 2\n")
    with pytest.raises(MindeditError, match="not valid YAML"):
        load_job_config(bad)


@pytest.mark.parametrize("change,message", [
    ({"train": {"stage1": {"lr": "fast"}}}, r"train\.stage1\.lr='fast': expected float"),
    ({"train": {"stage2": {"kl": "sideways"}}}, r"train\.stage2\.kl='sideways': expected one of"),
    ({"train": {"stage2": {"trainable": "mlp"}}}, r"train\.stage2\.trainable='mlp'"),
    ({"train": {"stage1": {"tokens": 10, "steps": 2}}}, r"train\.stage1: give tokens or steps, not both"),
    ({"train": {"stage1": {"lrr": 1e-3}}}, r"train\.stage1\.lrr: unknown key"),
    ({"train": {"stage1": {"row_relative": 1}}}, r"train\.stage1\.row_relative=1: expected bool"),
    ({"train": {"batch_size": 2, "stage2": {"row_relative": True}}},
     r"train\.stage1/2\.row_relative: not with parallel\.tp=4"),
    ({"train": {"batch_size": 0}}, r"train\.batch_size=0: expected at least 1"),
    ({"train": {"grad_accum": -1}}, r"train\.grad_accum=-1: expected a non-negative number"),
    ({"train": {"stage2": {"feature_layers": [99]}}}, r"train\.stage2\.feature_layers: 99 is not a layer index 0\.\.35"),
    ({"data": {"train": ["a.txt"]}}, r"data\.eval: required"),
    ({"data": {"train": ["a.txt"], "eval": ["b.txt"], "seq_len": 1}}, r"data\.seq_len=1: expected at least 2"),
    ({"eval": {"seq_len": True}}, r"eval\.seq_len=True: expected int"),
    ({"data": {"train": ["a.txt"], "eval": ["b.txt"]}, "train": {"stage2": {"seq_len": 1}}},
     r"train\.stage2\.seq_len=1: expected at least 2"),
    ({"parallel": {"tp": 3}}, r"parallel\.tp=3: does not divide num_attention_heads=32"),
    ({"parallel": {"dp": 3}}, r"train\.batch_size=2: the global batch must divide evenly over parallel\.dp=3"),
    ({"parallel": {"ep": 2}}, r"parallel\.ep=2: the model has no experts"),
    ({"parallel": {"pp": 99}}, r"parallel\.pp=99: more pipeline stages than num_hidden_layers=36"),
    ({"parallel": {"schedule": "1f1b"}}, r"parallel\.schedule='1f1b': expected one of \('gpipe',\)"),
    ({"parallel": {"tpp": 2}}, r"parallel\.tpp: unknown key"),
    ({"parallel": {"pp": 2, "micro_batches": 3}}, r"parallel\.micro_batches=3: must divide the 2 sequences"),
])
def test_bad_training_sections_are_named(tmp_path, change, message):
    import yaml
    raw = yaml.safe_load((CONFIGS / "qwen3_8b_mla.yaml").read_text())
    raw.update(change)
    bad = tmp_path / "job.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(MindeditError, match=r"job\.yaml: " + message):
        load_job_config(bad)


def test_shipped_job_configs_load_with_their_budgets():
    from mindedit.config import stage_steps
    for name, steps in (("smollm2_135m_gateswa", (80, 30)), ("smollm2_135m_mla", (350, 60)),
                        ("tiny_gateswa", (8, 6))):
        cfg = load_job_config(CONFIGS / f"{name}.yaml")
        assert (stage_steps(cfg, "stage1"), stage_steps(cfg, "stage2")) == steps, name


def test_set_overrides_any_key_and_names_bad_ones():
    from mindedit.config import stage_steps
    cfg = load_job_config(CONFIGS / "tiny_gateswa.yaml", ["stage1.steps=5", "parallel.tp=2", "train.seed=7",
                                                           "eval.contexts=[64, 128]"])
    assert stage_steps(cfg, "stage1") == 5 and cfg.parallel["tp"] == 2 and cfg.train["seed"] == 7
    assert cfg.contexts == [64, 128] and cfg.raw["train"]["stage1"]["steps"] == 5
    assert cfg.overrides == ["stage1.steps=5", "parallel.tp=2", "train.seed=7", "eval.contexts=[64, 128]"]
    for item, message in (("parallel.tp", "expected KEY.PATH=VALUE"), ("fast.lr=1", "unknown section 'fast'"),
                          ("name.x=1", "name is not a mapping"), ("parallel.tp=[1", "the value is not valid YAML"),
                          ("parallel.tp=3", r"parallel\.tp=3: does not divide num_attention_heads=4")):
        with pytest.raises(MindeditError, match=message):
            load_job_config(CONFIGS / "tiny_gateswa.yaml", [item])
