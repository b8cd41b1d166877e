"""The whole job on the tiny config, through the CLI as a user runs it: report, plots, export, MindSpore summary,
and a run killed with SIGKILL mid-stage that resumes to the same per-step losses and final weights."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import mindspore as ms
from safetensors.numpy import load_file

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs/tiny_gateswa.yaml"
REPORT_KEYS = ("teacher_ppl", "student_ppl_init", "student_ppl", "kl_init", "kl", "top1_agreement", "kv_reduction",
               "tokens_stage1", "tokens_stage2", "decode_tokens_per_s_teacher", "decode_tokens_per_s_student",
               "peak_rss_mb", "peak_rss_mb_training", "peak_rss_mb_evaluation")


def job(run_dir: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mindedit", "run", "--config", str(CONFIG), "--run-dir",
                             str(run_dir)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def finish(proc) -> str:
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    return out


def kill_at(run_dir: Path, global_step: int):
    """Starts the job and SIGKILLs it (whole process group) once metrics.jsonl reaches ``global_step``."""
    proc = job(run_dir, start_new_session=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= global_step:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.05)
    raise AssertionError(f"the job ended or stalled before global step {global_step}: {proc.communicate()[0][-2000:]}")


def losses(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["global_step"] for r in rows]
    assert steps == list(range(1, len(rows) + 1)), "each step logged exactly once, in order"
    return {r["global_step"]: r["loss"] for r in rows}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    out = finish(job(run_dir))
    return run_dir, out


def test_job_writes_report_plots_summary_and_export(finished_run):
    run_dir, out = finished_run
    report = json.loads((run_dir / "report.json").read_text())
    for key in REPORT_KEYS:
        assert isinstance(report[key], (int, float)) and np.isfinite(report[key]), key
    assert report["tokens_stage1"] == 8 * 2 * 2 * 64 and report["tokens_stage2"] == 6 * 2 * 2 * 64
    assert 0 < report["kv_reduction"] < 1 and report["kl"] >= 0
    # training ran in a child process of its own: the parent's peak is not the training's
    assert report["peak_rss_mb"] == max(report["peak_rss_mb_training"], report["peak_rss_mb_evaluation"]) > 0
    for stage in ("stage1", "stage2"):
        assert report["speed"][stage]["tokens_per_s"] > 0 and report["speed"][stage]["compile_s"] >= 0, stage
    assert "teacher ppl" in out and "dashboard: bash scripts/dashboard.sh" in out
    assert set(report["tasks"]) == {"arc_easy", "mmlu"} and report["tasks"]["mmlu"]["n"] == 6
    assert 0 <= report["tasks"]["arc_easy"]["student"]["acc_norm"] <= 1
    assert "| arc_easy | 6 | acc_norm |" in (run_dir / "report.md").read_text()
    # the learning curve: the student before training and at 2 milestones per stage, on the eval's own windows
    curve = report["curve"]
    assert [p["name"] for p in curve] == ["stage1-000000", "stage1-000004", "stage1-000008", "stage2-000003",
                                          "stage2-000006"]
    assert [p["tokens"] for p in curve] == [0, 4 * 256, 8 * 256, 8 * 256 + 3 * 256, 8 * 256 + 6 * 256]
    for point, tag in ((curve[0], "init"), (curve[-1], "final")):  # the same weights and windows as eval_<tag>
        ev = json.loads((run_dir / f"eval_{tag}.json").read_text())
        assert point["ppl_ratio"] == pytest.approx(ev["ppl_ratio"], rel=1e-6) and point["kl"] == pytest.approx(
            ev["kl"], rel=1e-5), tag
    assert curve[1]["ppl_ratio"] != curve[0]["ppl_ratio"]
    assert "| 2,048 | stage1 8 |" in (run_dir / "report.md").read_text()
    for png in ("loss.png", "stage1_layers.png", "perplexity.png", "tasks.png", "curve.png"):
        assert (run_dir / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| perplexity |" in (run_dir / "report.md").read_text()
    assert list((run_dir / "summary").glob("events.out.events.summary.*"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"layer_00", "layer_01", "grad_norm", "lr", "tokens_per_s"} <= set(rows[0])
    assert {"kl", "feature", "ce"} <= set(rows[-1]) and rows[-1]["stage"] == "stage2"
    # stage 2 is lr_relative (1.5e-2 x the teacher's attention weight RMS), stage 1 absolute (1e-3)
    from mindedit.config import load_job_config
    from mindedit.distill.optim import lr_at
    from mindedit.job import attention_weight_rms
    from mindedit.models import from_pretrained
    unit = attention_weight_rms(from_pretrained(load_job_config(CONFIG).resolve_model_path()))
    assert 0.005 < unit < 0.1
    for stage, steps, peak, warmup in (("stage1", 8, 1e-3, 2), ("stage2", 6, 1.5e-2 * unit, 1)):
        assert [r["lr"] for r in rows if r["stage"] == stage] == pytest.approx(
            [lr_at(i, steps, peak, warmup) for i in range(steps)], rel=1e-9), stage
    model = from_pretrained(run_dir / "export")
    assert model.config.attention_target["kind"] == "gateswa"
    # the export is what HF transformers loads, with the tokenizer the job trained on
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    hf = AutoModelForCausalLM.from_pretrained(run_dir / "export", trust_remote_code=True, dtype=torch.float32)
    ids = AutoTokenizer.from_pretrained(run_dir / "export")("The state of the union is strong.")["input_ids"]
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(theirs, model(ms.Tensor([ids], ms.int32)).asnumpy(), atol=1e-4, rtol=1e-4)
    # a rerun of a finished job trains nothing and reproduces the report
    again = finish(job(run_dir))
    assert "already finished" in again and json.loads((run_dir / "report.json").read_text())["kl"] == report["kl"]


def test_sigkill_mid_stage_resumes_to_identical_losses_and_weights(finished_run, tmp_path):
    reference, _ = finished_run
    run_dir = tmp_path / "run"
    kill_at(run_dir, 5)     # stage 1 step 5: the newest checkpoint is stage1 step 3
    kill_at(run_dir, 12)    # stage 2 step 4 of the resumed run: newest is stage2 step 3
    out = finish(job(run_dir))
    assert "resuming from" in out and "stage1: already finished" in out
    assert_identical_runs(reference, run_dir)


def assert_identical_runs(reference: Path, run_dir: Path):
    """Bit-exact: the same per-step losses and the same exported weights, to the last bit."""
    expected, got = losses(reference), losses(run_dir)
    assert got == expected
    a, b = load_file(str(reference / "export/model.safetensors")), load_file(str(run_dir / "export/model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)


def corrupt(ckpt: Path):
    weights = ckpt / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])  # truncated, as by a crash mid-write of a copy


def test_a_corrupt_newest_checkpoint_resumes_from_the_one_before_and_all_corrupt_starts_over(finished_run, tmp_path):
    reference, _ = finished_run
    run_dir = tmp_path / "run"
    kill_at(run_dir, 7)     # stage 1 step 7: checkpoints stage1 steps 3 and 6
    ckpts = sorted((run_dir / "checkpoints").glob("stage*"))
    assert [c.name for c in ckpts] == ["stage1-000003", "stage1-000006"]
    corrupt(ckpts[-1])
    out = finish(job(run_dir))
    assert "warning: skipping checkpoint" in out and "stage1-000006" in out
    assert "resuming from" in out and "stage1-000003" in out
    assert_identical_runs(reference, run_dir)
    again = tmp_path / "again"
    kill_at(again, 4)       # only stage1 step 3 exists
    corrupt(again / "checkpoints" / "stage1-000003")
    out = finish(job(again))
    assert "no valid checkpoint" in out and "training starts over" in out and "resuming from" not in out
    assert_identical_runs(reference, again)


def test_dashboard_serves_every_logged_step_and_renders_in_chromium(finished_run, tmp_path):
    """Real MindInsight 2.3.1 (own venv, installed by the script on first use) and real headless Chromium."""
    import shutil
    import socket
    import urllib.parse
    import urllib.request
    run_dir, _ = finished_run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = [str(REPO / "scripts/dashboard.sh")]
    started = subprocess.run(["bash", *script, str(run_dir), "--port", str(port)], capture_output=True, text=True,
                             timeout=900)
    assert started.returncode == 0, started.stderr[-2000:]
    assert f"http://127.0.0.1:{port}/" in started.stdout
    api = f"http://127.0.0.1:{port}/v1/mindinsight/datavisual"
    try:
        deadline, jobs = time.time() + 120, []
        while time.time() < deadline:
            with urllib.request.urlopen(f"{api}/train-jobs", timeout=10) as r:
                jobs = json.load(r)["train_jobs"]
            if jobs and jobs[0]["cache_status"] == "CACHED":
                break
            time.sleep(1)
        assert [j["train_id"] for j in jobs] == ["./summary"]
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        expected = {}
        for row in rows:
            for key, value in row.items():
                if key not in ("stage", "step", "global_step", "time") and isinstance(value, (int, float)):
                    expected.setdefault(f"{row['stage']}/{key}/scalar", []).append((row["global_step"], value))
        assert set(jobs[0]["plugins"]["scalar"]) == set(expected)
        for tag, points in expected.items():
            query = urllib.parse.urlencode({"train_id": "./summary", "tag": tag})
            with urllib.request.urlopen(f"{api}/scalar/metadata?{query}", timeout=10) as r:
                served = [(m["step"], m["value"]) for m in json.load(r)["metadatas"]]
            assert [s for s, _ in served] == [s for s, _ in points], tag
            np.testing.assert_allclose([v for _, v in served], [v for _, v in points], rtol=1e-6, err_msg=tag)
        shot = tmp_path / "scalars.png"
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        assert chromium, "chromium is installed by `bash scripts/setup.sh --test`"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run",
                        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900",
                        "--virtual-time-budget=15000", f"--screenshot={shot}",
                        f"http://127.0.0.1:{port}/#/train-manage/scalar?train_id=./summary"],
                       capture_output=True, timeout=120, check=True)
        from PIL import Image
        pixels = np.asarray(Image.open(shot).convert("RGB"))
        assert pixels.shape[:2] == (900, 1280)
        # a rendered page of charts: many distinct colours, not a blank or error page ...
        colours = {tuple(c) for c in pixels.reshape(-1, 3)[::7]}
        assert len(colours) > 200
        # ... and the first chart's curve drawn across its plot area in MindInsight's line colour (0, 165, 166)
        plot = pixels[300:505, 100:365].astype(int)
        line = np.abs(plot - np.array([0, 165, 166])).sum(-1) < 40
        assert line.sum() > 200 and line.any(axis=0).sum() > 150, (line.sum(), line.any(axis=0).sum())
    finally:
        subprocess.run(["bash", *script, "--stop", "--port", str(port)], capture_output=True, timeout=120)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{api}/train-jobs", timeout=5)
