"""Sharded training through real msrun jobs on the CPU backend must reproduce the single-process run of the same
config: the same per-step losses (stage 1 and stage 2, <= 1e-5 relative) and the same trained weights.

Each case is one `python -m mindedit train --set parallel...` launch (msrun inside); the single-process reference
of each config runs once. The configs cover a dense Qwen3 with a GateSWA target (sinks, gates) and a Qwen3-MoE
with an MLA target, everything trainable in stage 2 (embedding, head, norms, MLPs, experts, attention).
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[1]
DENSE = "configs/tiny_gateswa.yaml"
MOE = "configs/ci/tiny_qwen3_moe.yaml"
COMMON = ["stage1.steps=5", "stage2.steps=5", "train.checkpoint_every=3", "train.stage2.trainable=all"]


def mindedit(command, config, run_dir, sets=(), check=True):
    args = [sys.executable, "-m", "mindedit", command, "--config", config, "--run-dir", str(run_dir)]
    for s in [*COMMON, *sets]:
        args += ["--set", s]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def losses(run_dir) -> list:
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [(r["stage"], r["step"], r["loss"]) for r in rows]


def final_weights(run_dir) -> dict:
    newest = sorted((Path(run_dir) / "checkpoints").glob("stage2-*"))[-1]
    return load_file(str(newest / "weights.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cache = {}

    def get(config):
        if config not in cache:
            run = tmp_path_factory.mktemp("single")
            mindedit("train", config, run)
            cache[config] = (losses(run), final_weights(run), rank_summaries(run)[0])
        return cache[config]
    return get


def rank_summaries(run_dir) -> list:
    return [json.loads(p.read_text()) for p in sorted((Path(run_dir) / "logs").glob("rank_*.json"),
                                                        key=lambda p: int(p.stem.split("_")[1]))]


def assert_really_sharded(run_dir, single: dict, sets):
    """Each rank holds only its pieces (logs/rank_<r>.json): a "sharded" run that secretly replicates must fail."""
    degree = {k: 1 for k in ("dp", "tp", "pp", "ep")}
    degree.update({s.split("=")[0].split(".")[1]: int(s.split("=")[1]) for s in sets if s.startswith("parallel.")})
    ranks = rank_summaries(run_dir)
    assert len(ranks) == degree["dp"] * degree["tp"] * degree["pp"]
    all_layers = single["layers"]
    for r in ranks:
        if degree["pp"] > 1:
            assert 0 < len(r["layers"]) < len(all_layers), r
        else:
            assert r["layers"] == all_layers, r
        held, whole = r["teacher_param_bytes"], single["teacher_param_bytes"]
        if degree["tp"] > 1:  # heads, MLP columns and the (dominant) vocabulary split
            assert held < 0.8 * whole, (r, single)
        elif degree["pp"] * degree["ep"] > 1:  # layers or experts split
            assert held < whole, (r, single)
        else:
            assert held == whole, (r, single)
    assert sorted(i for r in ranks if r["tp"] == 0 and r["dp"] == 0 for i in r["layers"]) == all_layers


def assert_same_run(run_dir, ref):
    ref_losses, ref_weights, _ = ref
    got = losses(run_dir)
    assert [g[:2] for g in got] == [r[:2] for r in ref_losses] and len(got) == 10
    for (stage, step, a), (_, _, b) in zip(got, ref_losses):
        assert abs(a - b) <= 1e-5 * abs(b), f"{stage} step {step}: sharded loss {a} vs single-process {b}"
    weights = final_weights(run_dir)
    assert sorted(weights) == sorted(ref_weights)
    for name, w in ref_weights.items():
        # Adam moves near-zero gradients by about lr whatever their size: 1e-5 is ~3% of one step at lr 3e-4
        np.testing.assert_allclose(weights[name], w, rtol=0, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("config,sets", [
    (MOE, ["parallel.tp=2"]),
    (MOE, ["parallel.dp=2", "parallel.ep=2"]),
    (MOE, ["parallel.tp=2", "parallel.ep=2"]),
    (DENSE, ["parallel.dp=2"]),
    (DENSE, ["parallel.tp=2"]),
    (DENSE, ["parallel.tp=4"]),  # 4 query heads, 2 KV heads: each KV head replicated on two ranks
    (MOE, ["parallel.pp=2", "parallel.micro_batches=2"]),
    (DENSE, ["parallel.tp=2", "parallel.pp=2"]),  # tied head: the table lives on the first and last stage
], ids=["moe-tp2", "moe-dp2-ep2", "moe-tp2-ep2", "dense-dp2", "dense-tp2", "dense-tp4", "moe-pp2-mb2",
        "dense-tp2-pp2"])
def test_sharded_training_matches_single_process(reference, tmp_path, config, sets):
    mindedit("train", config, tmp_path, sets)
    assert_same_run(tmp_path, reference(config))
    assert_really_sharded(tmp_path, reference(config)[2], sets)
    assert (tmp_path / "logs" / "worker_0.log").is_file()


def test_sharded_checkpoint_resumes_and_loads_into_one_process(reference, tmp_path):
    sets = ["parallel.tp=2"]
    mindedit("train", MOE, tmp_path, sets)
    # drop the final checkpoint: the rerun resumes from stage 2 step 3 under the same layout and must end the same
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["stage2-000003", "stage2-000005"]
    shutil.rmtree(ckpts / "stage2-000005")
    out = mindedit("train", MOE, tmp_path, sets).stdout
    assert "resuming from" in out and "stage2-000003" in out
    assert_same_run(tmp_path, reference(MOE))
    # the full checkpoint of the sharded run evaluates in one process (no parallel section)
    proc = mindedit("eval", MOE, tmp_path)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert np.isfinite(result["student_ppl"]) and result["student_ppl"] > 1


def test_a_failing_rank_is_named_and_bad_layouts_never_start(tmp_path):
    # a layout the model cannot take is refused before anything starts ...
    proc = mindedit("train", DENSE, tmp_path, ["parallel.tp=3"], check=False)
    assert proc.returncode != 0 and "parallel.tp=3: does not divide num_attention_heads=4" in proc.stderr
    assert not (tmp_path / "logs").exists()
    # ... and a rank that dies inside the job is named, with the end of its log
    proc = mindedit("train", DENSE, tmp_path, ["parallel.dp=2", "stage1.lr=.inf"], check=False)
    assert proc.returncode != 0
    # (both ranks see the same non-finite loss; msrun reports whichever exits first)
    assert re.search(r"error: rank [01] on node 0 \(127\.0\.0\.1\) exited with 1; the job was stopped on every node",
                     proc.stderr)
    assert "FloatingPointError: stage1 step 2: the loss is nan" in proc.stderr


@pytest.fixture
def second_node():
    """A second "machine": a network namespace joined to this one by a veth pair (10.x.y.1 here, 10.x.y.2 there).
    msrun starts its scheduler on whichever node owns the master address, so two launchers sharing one network
    would both try; in its own namespace node 1 sees the master as remote, as on a real cluster. The subnet is drawn
    at random in a 10.x/16 no interface here is in: a second interface on the same /24 (left by a killed run, or a
    job beside this one on a shared network) routes node 1's replies elsewhere and msrun fails "building
    networking"."""
    import random
    addrs = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    taken = set(re.findall(r"inet 10\.(\d+)\.", addrs))
    tag = f"{os.getpid() % 1000}{random.randrange(100)}"
    subnet = f"10.{random.choice([b for b in range(128, 255) if str(b) not in taken])}.{random.randrange(256)}"
    ns, here, there, veth = f"mindedit{tag}", f"{subnet}.1", f"{subnet}.2", f"me{tag}"
    steps = [["ip", "netns", "add", ns], ["ip", "link", "add", f"{veth}a", "type", "veth", "peer", "name", f"{veth}b"],
             ["ip", "link", "set", f"{veth}b", "netns", ns], ["ip", "addr", "add", f"{here}/24", "dev", f"{veth}a"],
             ["ip", "link", "set", f"{veth}a", "up"],
             ["ip", "netns", "exec", ns, "ip", "addr", "add", f"{there}/24", "dev", f"{veth}b"],
             ["ip", "netns", "exec", ns, "ip", "link", "set", f"{veth}b", "up"],
             ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]]
    try:
        for cmd in steps:
            subprocess.run(cmd, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as e:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        pytest.skip(f"needs root and iproute2 network namespaces for a second node ({e})")
    yield {"namespace": ns, "master": here, "node": there}
    subprocess.run(["ip", "link", "del", f"{veth}a"], capture_output=True)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_two_node_rehearsal_through_the_ssh_seam(reference, tmp_path, second_node):
    """Two nodes as on two servers: the launcher runs node 0 (the master) itself and reaches node 1 through its
    ssh seam (a stand-in that runs the command line in node 1's network namespace); msrun --node_rank 0/1 with
    two workers each; a tp=2 x pp=2 job whose two pipeline stages sit on different nodes."""
    import yaml
    from cluster.msrun import free_port
    raw = yaml.safe_load((ROOT / DENSE).read_text())
    master, node = second_node["master"], second_node["node"]
    raw["cluster"] = {"master": {"host": master, "port": free_port(master)}, "cluster_time_out": 120,
                      "nodes": [{"host": master, "devices": [0, 1]}, {"host": node, "devices": [0, 1]}]}
    config = tmp_path / "two_nodes.yaml"
    config.write_text(yaml.safe_dump(raw))
    os.environ.update(MINDEDIT_SSH=str(ROOT / "tests" / "tools" / "fake_ssh.py"),
                      FAKE_SSH_LOG=str(tmp_path / "ssh.log"), FAKE_SSH_NETNS=f"{node}={second_node['namespace']}")
    try:
        mindedit("train", str(config), tmp_path / "run", ["parallel.tp=2", "parallel.pp=2"])
    finally:
        for key in ("MINDEDIT_SSH", "FAKE_SSH_LOG", "FAKE_SSH_NETNS"):
            del os.environ[key]
    calls = [json.loads(line) for line in (tmp_path / "ssh.log").read_text().splitlines()]
    assert len(calls) == 1 and calls[0][:6] == ["-o", "BatchMode=yes", "-p", "22", "-tt", node]
    assert "--node_rank=1" in calls[0][6] and f"--master_addr={master}" in calls[0][6]
    logs = tmp_path / "run" / "logs"
    assert sorted(p.name for p in (logs / "node1").glob("worker_*.log")) == ["worker_2.log", "worker_3.log"]
    assert not (logs / "node1" / "scheduler.log").exists()  # node 1 joined node 0's scheduler
    assert_same_run(tmp_path / "run", reference(DENSE))


def test_a_killed_rank_stops_the_job_and_a_rerun_resumes_to_the_same_losses(tmp_path):
    import signal
    import time
    sets = ["parallel.dp=2", "stage1.steps=9", "stage2.steps=3"]
    mindedit("train", DENSE, tmp_path / "uninterrupted", sets)
    run = tmp_path / "killed"
    args = [sys.executable, "-m", "mindedit", "train", "--config", DENSE, "--run-dir", str(run)]
    for item in [*COMMON, *sets]:
        args += ["--set", item]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    launcher = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and not (run / "checkpoints" / "stage1-000003").is_dir():
        assert launcher.poll() is None, launcher.communicate()
        time.sleep(0.5)
    victim = int((run / "logs" / "rank_1.pid").read_text())
    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    out, err = launcher.communicate(timeout=300)
    assert launcher.returncode != 0
    assert time.time() - killed_at < 60, "the job must stop within 60 s of a rank dying"
    assert "rank 1" in err and "stopped on every node" in err, err[-2000:]
    mindedit("train", DENSE, run, sets)  # the same command again: resumes from the newest complete checkpoint
    want = losses(tmp_path / "uninterrupted")
    got = losses(run)
    assert [g[:2] for g in got] == [w[:2] for w in want]
    for (stage, step, a), (_, _, b) in zip(got, want):
        assert abs(a - b) <= 1e-6 * abs(b), (stage, step, a, b)


def test_a_node_that_never_joins_ends_at_the_cluster_timeout_naming_it(tmp_path):
    import time
    import yaml
    from cluster.msrun import free_port
    raw = yaml.safe_load((ROOT / DENSE).read_text())
    raw["cluster"] = {"master": {"host": "127.0.0.1", "port": free_port()}, "cluster_time_out": 20,
                      "nodes": [{"host": "127.0.0.1", "devices": [0]}, {"host": "127.0.0.2", "devices": [0]}]}
    config = tmp_path / "two_nodes.yaml"
    config.write_text(yaml.safe_dump(raw))
    os.environ["MINDEDIT_SSH"] = str(ROOT / "tests" / "tools" / "hanging_ssh.py")
    try:
        t0 = time.time()
        proc = mindedit("train", str(config), tmp_path / "run", ["parallel.dp=2"], check=False)
    finally:
        del os.environ["MINDEDIT_SSH"]
    assert proc.returncode != 0 and time.time() - t0 < 150
    assert "nodes that never started a worker: 127.0.0.2" in proc.stderr, proc.stderr[-2000:]


def test_sigterm_to_the_launcher_stops_every_process_it_started(tmp_path):
    import signal
    import time
    args = [sys.executable, "-m", "mindedit", "train", "--config", DENSE, "--run-dir", str(tmp_path)]
    for item in [*COMMON, "parallel.dp=2", "stage1.steps=50"]:
        args += ["--set", item]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    launcher = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids = tmp_path / "logs"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(pids.glob("rank_*.pid"))) < 2:
        assert launcher.poll() is None, launcher.communicate()
        time.sleep(0.5)
    workers = [int(p.read_text()) for p in pids.glob("rank_*.pid")]
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=60)
    assert launcher.returncode != 0 and "stopped by signal 15" in err

    def running(pid):
        try:
            return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
        except OSError:
            return False
    deadline = time.time() + 10  # workers die with their msrun (mindedit.launch.exit_with_parent)
    while time.time() < deadline and any(running(pid) for pid in workers):
        time.sleep(0.5)
    alive = [pid for pid in workers if running(pid)]
    assert not alive, f"workers still running 10 s after the launcher was stopped: {alive}"
