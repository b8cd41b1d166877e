"""The script msrun starts on every rank: ``python cluster/worker.py --config FILE --run-dir DIR [--set K=V ...]``
(msrun launches a script path, not a module; this puts the repository on sys.path and enters the CLI).

A worker dies with its parent (msrun, or cluster/node.py): msrun does not pass a SIGTERM or a hang-up on to its
workers, and an orphaned rank would otherwise wait in a collective for ever (measured)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mindedit.cli import main  # noqa: E402


def exit_with_parent():
    """Linux: the kernel kills this process when its parent dies (prctl PR_SET_PDEATHSIG), even while MindSpore
    blocks in a collective holding the GIL (a watcher thread could not run then)."""
    import ctypes
    import signal
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass  # not Linux: msrun's own clean-up only


if __name__ == "__main__":
    exit_with_parent()
    main(["worker", *sys.argv[1:]])
