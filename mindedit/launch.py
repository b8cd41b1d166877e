"""Launching the training processes: what every rank of a sharded job runs (``python -m mindedit worker ...``),
the per-node plan (cluster/), the dry run, the one-process job's training child, and a child's tie to its parent.
cluster/ starts and watches the processes; this module only says what they are."""
import subprocess
import sys
from pathlib import Path

from mindedit.config import JobConfig
from mindedit.errors import MindeditError
from mindedit.utils.files import atomic_write_json


def worker_argv(cfg: JobConfig, run_dir: Path, command: str = "worker", python: str = "python") -> list:
    """The command every rank runs (msrun takes "python" as the interpreter: the one on PATH)."""
    argv = [python, "-m", "mindedit", command, "--config", str(Path(cfg.source).resolve()),
            "--run-dir", str(Path(run_dir).resolve())]
    for item in cfg.overrides:
        argv += ["--set", item]
    return argv


def train_apart(cfg: JobConfig, run_dir: Path, log=print):
    """Both training stages in processes of their own, which leave full checkpoints behind: the ranks of a sharded
    job, or one child per stage (``python -m mindedit train-child --stage stageN``; the second resumes from the
    first's final checkpoint). A compiled MindSpore graph keeps its memory until its process ends
    (docs/environment.md): a stage's graphs must not outlive it into the next stage or the evaluation."""
    if cfg.dims.world > 1:
        return train_sharded(cfg, run_dir, log)
    for stage in ("stage1", "stage2"):
        argv = worker_argv(cfg, run_dir, "train-child", sys.executable) + ["--stage", stage]
        code = subprocess.run(argv).returncode
        if code != 0:
            raise MindeditError(f"training stopped in {stage}: its process ({' '.join(argv[1:])}) exited with code "
                                f"{code}; its output is above, its checkpoints are in {run_dir}/checkpoints (rerun "
                                f"the same command to resume)")


def node_plan(cfg: JobConfig, run_dir: Path) -> list:
    """Per node, what will run (cluster.launch.NodeLaunch); writes run_dir/rank_table.json when the device IPs are
    known or the rank-table launcher needs them."""
    from cluster.launch import plan_nodes, read_remote_file
    from cluster.ranktable import collect_device_ips, rank_table
    cluster, table = cfg.cluster, None
    if cluster.launcher == "rank_table":
        collect_device_ips(cluster, lambda node: read_remote_file(cluster, node))
    if all(n.device_ips is not None for n in cluster.nodes) and not cluster.local:
        table = Path(run_dir) / "rank_table.json"
        atomic_write_json(table, rank_table(cluster))
    return plan_nodes(cluster, worker_argv(cfg, run_dir), Path(run_dir), table)


def train_sharded(cfg: JobConfig, run_dir: Path, log=print):
    """Starts every rank (each trains both stages; rank 0 writes full checkpoints) and waits for all of them."""
    from cluster.launch import run_nodes
    d = cfg.dims
    log(f"parallel: dp={d.dp} tp={d.tp} pp={d.pp} ep={d.ep}: {d.world} ranks train")
    run_nodes(node_plan(cfg, run_dir), Path(run_dir), log=log)


def dry_run(cfg: JobConfig, run_dir: Path) -> str:
    """What ``run`` would start, per node, plus the memory plan; starts nothing."""
    from cluster.launch import describe
    from mindedit.parallel.plan import estimate, format_plan
    c = cfg.cluster
    lines = [f"job {cfg.name}: {cfg.dims.world} ranks on {len(c.nodes)} node(s), launcher {c.launcher}, master "
             f"{c.master_host}:{c.master_port or '(free port)'}", describe(node_plan(cfg, run_dir))]
    table = Path(run_dir) / "rank_table.json"
    lines.append(f"rank table: {table}" if table.is_file() else "rank table: not written (no device IPs: the msrun "
                 "launcher does not need one)")
    lines.append(format_plan(cfg, estimate(cfg, 64 * 2 ** 30)))
    return "\n".join(lines)


def exit_with_parent():
    """A rank dies with its parent (msrun, or cluster/node.py): msrun does not pass a SIGTERM or a hang-up on to its
    workers, and an orphaned rank would wait in a collective for ever (measured). Linux: the kernel kills this
    process when its parent dies (prctl PR_SET_PDEATHSIG), even while MindSpore blocks in a collective holding
    the GIL (a watcher thread could not run then)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
