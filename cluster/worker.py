"""The script msrun starts on every rank: ``python cluster/worker.py --config FILE --run-dir DIR [--set K=V ...]``
(msrun launches a script path, not a module; this puts the repository on sys.path and enters the CLI)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mindedit.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["worker", *sys.argv[1:]])
