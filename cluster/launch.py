"""Start, watch and stop a job's worker processes on every node of its cluster.

The launching node is the master (``cluster.master.host``): its command runs locally; every other node's runs
through ssh. Commands are argument lists; the one string that must exist (the command line ssh hands to the
remote shell) is built with ``shlex.join``, each argument quoted as data. ``MINDEDIT_SSH`` names a stand-in
for ``ssh`` (the remote-execution seam: tests run "remote" nodes on this machine through it).

Per node:
    msrun       one ``msrun --node_rank i --local_worker_num n ...`` (msrun starts the n workers)
    rank_table  ``python -m cluster.node`` with the HCCL rank table: one worker per device with RANK_TABLE_FILE,
                RANK_ID, DEVICE_ID, RANK_SIZE (Ascend only: mccl on CPU cannot initialise from a rank table)

Watching: rank 0's log is tailed to this terminal; when any node's process exits non-zero, every other node's
process group is terminated (SIGTERM, SIGKILL after 10 s) and the error names the failed rank, its node and the
end of its log. Ctrl-C / SIGTERM to the launcher stops everything it started.
"""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cluster.config import Cluster
from cluster.msrun import LaunchError, failed_ranks, free_port, msrun_command, tail

REPO = Path(__file__).resolve().parents[1]


@dataclass
class NodeLaunch:
    index: int
    host: str
    argv: list            # what runs on the node
    env: dict             # variables set for it (on top of the node's environment)
    log_dir: Path
    ssh: list = None      # ssh and its arguments up to the target when the node is remote; None: this machine

    @property
    def remote(self) -> bool:
        return self.ssh is not None

    def command(self) -> list:
        """The argv this launcher executes: the node's argv, or ssh carrying it (shlex-quoted) to the node."""
        if self.ssh is None:
            return list(self.argv)
        # the same checkout and venv paths on every node (shared storage or identical installs)
        line = (f"cd {shlex.quote(str(REPO))} && export PATH={shlex.quote(str(Path(sys.executable).parent))}:\"$PATH\""
                " && exec env " + shlex.join([f"{k}={v}" for k, v in sorted(self.env.items())]
                                             + list(map(str, self.argv))))
        return [*self.ssh, line]


def plan_nodes(cluster: Cluster, worker_argv: list, run_dir: Path, rank_table_path: Path = None) -> list:
    """One NodeLaunch per node (ports resolved, logs under run_dir/logs[/node<i>]); ``worker_argv`` is the command
    every rank runs."""
    port = cluster.master_port or free_port()
    out = []
    for i, node in enumerate(cluster.nodes):
        log_dir = Path(run_dir) / "logs" / (f"node{i}" if len(cluster.nodes) > 1 else "")
        env = dict(cluster.env, GLOG_v=cluster.env.get("GLOG_v", "3"))
        if cluster.launcher == "msrun":
            argv = msrun_command(worker_argv, cluster.world, log_dir, port, local_workers=len(node.devices),
                                 master_addr=cluster.master_host, node_rank=i,
                                 cluster_timeout=cluster.cluster_time_out)
        else:
            argv = [sys.executable, "-m", "cluster.node", "--rank-table", str(rank_table_path), "--node", str(i),
                    "--log-dir", str(log_dir), "--", *map(str, worker_argv)]
        ssh = None
        if node.host != cluster.master_host:
            target = f"{cluster.ssh_user}@{node.host}" if cluster.ssh_user else node.host
            # -tt: a remote pty, so that closing this ssh (when the launcher stops the job) hangs up the remote msrun
            ssh = [os.environ.get("MINDEDIT_SSH", "ssh"), "-o", "BatchMode=yes", "-p", str(cluster.ssh_port), "-tt",
                   target]
        out.append(NodeLaunch(i, node.host, argv, env, log_dir, ssh))
    return out


def read_remote_file(cluster: Cluster, node, path: str = "/etc/hccn.conf") -> str:
    """A text file on a node: read here for the master, through ssh (argv, quoted) for the others."""
    if node.host == cluster.master_host:
        return Path(path).read_text()
    target = f"{cluster.ssh_user}@{node.host}" if cluster.ssh_user else node.host
    proc = subprocess.run([os.environ.get("MINDEDIT_SSH", "ssh"), "-o", "BatchMode=yes", "-p", str(cluster.ssh_port),
                           target, shlex.join(["cat", path])], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip()[-300:] or f"ssh exited with {proc.returncode}")
    return proc.stdout


def describe(launches: list) -> str:
    """The dry run: per node, the exact command, its environment and its log directory."""
    lines = []
    for n in launches:
        lines.append(f"node {n.index} ({n.host}{', via ssh' if n.remote else ', this machine'})")
        lines.append(f"  command: {shlex.join(map(str, n.command()))}")
        lines.append(f"  env:     {json.dumps(n.env, sort_keys=True)}")
        lines.append(f"  logs:    {n.log_dir}")
    return "\n".join(lines)


def stop_all(procs, grace: float = 10.0):
    """SIGTERM to each running process's group, SIGKILL after ``grace`` seconds; waits for all of them."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.time() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


DIED = re.compile(r"Worker process (\d+) exit with exception\. Error code: (-?\d+)")


def _pump(proc, sink: Path, echo: bool, died: list):
    """Copies a node's launcher output to logs/launcher_node<i>.log (and to this terminal for node 0: msrun tails
    rank 0's log there), noting msrun's report of a worker that died."""
    with open(sink, "a") as f:
        for line in proc.stdout:
            f.write(line)
            f.flush()
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
            m = DIED.search(line)
            if m:
                died.append((int(m.group(1)), int(m.group(2))))


def run_nodes(launches: list, run_dir: Path, log=print, poll: float = 0.5):
    """Starts every node and waits. When a worker dies or a node's process fails, every node is stopped and
    LaunchError names the rank (from the workers' logs/rank_<r>.pid), its node and the end of its log."""
    logs = Path(run_dir) / "logs"
    for n in launches:
        n.log_dir.mkdir(parents=True, exist_ok=True)
        for old in {*n.log_dir.glob("*.log"), *logs.glob("rank_*.pid"), *logs.glob("launcher_*.log")}:
            old.unlink(missing_ok=True)
    base = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    procs, died, stopping = [], [], []

    def on_signal(signum, frame):
        stopping.append(signum)

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for n in launches:
            p = subprocess.Popen(n.command(), env={**base, **n.env}, start_new_session=True, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, errors="replace")
            threading.Thread(target=_pump, args=(p, logs / f"launcher_node{n.index}.log", n.index == 0, died),
                             daemon=True).start()
            procs.append(p)
        log(f"launch: {len(launches)} node(s) ({', '.join(n.host for n in launches)}), logs in {logs}")
        joined = set()
        while True:
            now = {n.index for n in launches if any(n.log_dir.glob("worker_*.log"))}
            if now != joined and len(launches) > 1:
                joined = now
                waiting = [n.host for n in launches if n.index not in joined]
                log(f"launch: {len(joined)}/{len(launches)} nodes running workers"
                    + (f"; waiting for {', '.join(waiting)}" if waiting else ""))
            if stopping:
                stop_all(procs)
                raise LaunchError(f"stopped by signal {stopping[0]}: terminated every node's processes")
            codes = [p.poll() for p in procs]
            bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if died or bad:
                time.sleep(2)  # let msrun report the other workers too: the first to die is the cause, not the
                stop_all(procs)  # ones msrun then terminates (SIGTERM)
                raise LaunchError(_failure(launches, logs, sorted(died, key=lambda d: d[1] == -signal.SIGTERM),
                                           bad))
            if all(c == 0 for c in codes):
                return
            time.sleep(poll)
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)


def _rank_of_pid(logs: Path, pid: int):
    for f in logs.glob("rank_*.pid"):
        if f.read_text().strip() == str(pid):
            return int(f.stem.split("_")[1])
    return None


def _node_of_rank(launches, rank: int):
    for n in launches:
        if (n.log_dir / f"worker_{rank}.log").is_file():
            return n
    return launches[0]


def _tail(path: Path, lines: int = 12) -> str:
    return tail(path.read_text(errors="replace"), lines) if path.is_file() else ""


def _failure(launches, logs: Path, died: list, bad: list) -> str:
    stopped = "the job was stopped on every node"
    never = [m.host for m in launches if not any(m.log_dir.glob("worker_*.log"))]
    if never and len(never) < len(launches):  # the others gave up waiting for them (cluster_time_out)
        return (f"nodes that never started a worker: {', '.join(never)} (unreachable, or msrun failed there); the "
                f"other nodes timed out in cluster init and {stopped}. Launcher output of "
                f"{never[0]}:\n{_tail(logs / f'launcher_node{[m.host for m in launches].index(never[0])}.log', 8)}")
    for pid, code in died:  # msrun saw a worker die (a signal, or an exit code)
        rank = _rank_of_pid(logs, pid)
        if rank is not None:
            n = _node_of_rank(launches, rank)
            how = f"killed by signal {-code}" if code < 0 else f"exited with {code}"
            log_file = n.log_dir / f"worker_{rank}.log"
            return f"rank {rank} on node {n.index} ({n.host}) {how}; {stopped}. End of {log_file}:\n{_tail(log_file)}"
    for n in launches:  # a worker that raised
        failed = failed_ranks(n.log_dir)
        if failed:
            rank, tail = failed[0]
            return (f"rank {rank} on node {n.index} ({n.host}) failed (log {n.log_dir}/worker_{rank}.log); {stopped}. "
                    f"Last lines:\n{tail}")
    index, code = bad[0] if bad else (0, None)
    n = launches[index]
    return (f"node {n.index} ({n.host}) exited with {code}; {stopped}. Its launcher output ends:\n"
            f"{_tail(logs / f'launcher_node{n.index}.log', 8)}")


__all__ = ["NodeLaunch", "plan_nodes", "describe", "run_nodes", "read_remote_file", "LaunchError"]
