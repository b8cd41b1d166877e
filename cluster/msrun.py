"""The ``msrun`` command of one node, and reading its per-rank logs after a failure.

The command is an argument list (never a shell string). ``worker_argv`` is the whole command every rank runs
(e.g. ``python -m mindedit worker ...``: msrun takes "python" as the interpreter and runs the rest with it, the
``python`` found on PATH, so the launcher puts the running interpreter's directory first: cluster/launch.py).
"""
import re
import socket
from pathlib import Path

class LaunchError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at host now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def msrun_command(worker_argv, workers: int, log_dir, master_port: int, local_workers: int = None,
                  master_addr: str = "127.0.0.1", node_rank: int = 0, cluster_timeout: int = 60) -> list:
    return ["msrun", f"--worker_num={workers}", f"--local_worker_num={local_workers or workers}",
            f"--master_addr={master_addr}", f"--master_port={master_port}", f"--node_rank={node_rank}",
            f"--log_dir={log_dir}", "--join=True", f"--cluster_time_out={cluster_timeout}", "--tail_worker_log=0",
            *map(str, worker_argv)]


def tail(text: str, lines: int = 12) -> str:
    """The last lines of a log without MindSpore's [INFO]/[WARNING] chatter."""
    keep = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith(("[INFO]", "[WARNING]"))]
    return "\n".join(keep[-lines:])


def failed_ranks(log_dir) -> list:
    """(rank, last lines) of the worker logs that end in a Python traceback or an error line."""
    out = []
    for log in sorted(Path(log_dir).glob("worker_*.log"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0)):
        text = log.read_text(errors="replace")
        if "Traceback (most recent call last)" in text or re.search(r"^\w*Error: ", text, re.M):
            out.append((int(re.sub(r"\D", "", log.stem)), tail(text)))
    return out
