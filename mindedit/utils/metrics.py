"""Training metrics: ``metrics.jsonl`` (one JSON object per step, written as it happens: the source of truth) and
MindSpore ``SummaryRecord`` scalars under ``summary/`` for MindInsight, rebuilt from the log at every checkpoint
and at the end of each stage.

Why not a SummaryRecord open for the whole run: in MindSpore 2.10 its writer is a forked process that polls its
queue without blocking, which keeps one CPU core at 100% for as long as the record is open (on the 2-core CPU
machine, half of the training throughput). A short-lived record per sync costs about a second.

On resume the log is cut back to the checkpoint (later steps will be recomputed), so every tag has each step
exactly once."""
import json
import shutil
from pathlib import Path

from mindedit.utils.files import atomic_write_text

SKIP = {"stage", "step", "global_step", "time"}


class Metrics:
    def __init__(self, run_dir, keep_until: int = 0):
        """keep_until: global steps <= this are kept from an earlier run (0: start a new log)."""
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        rows = [r for r in read(self.path) if r["global_step"] <= keep_until] if keep_until else []
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))
        self.file = open(self.path, "a")
        self.sync_summary()

    def log(self, row: dict):
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def sync_summary(self):
        """Rewrites summary/ from metrics.jsonl (into a fresh directory, then swapped in)."""
        from mindspore.train import SummaryRecord
        import mindspore as ms
        fresh, final = self.run_dir / "summary.tmp", self.run_dir / "summary"
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir()
        with SummaryRecord(str(fresh)) as record:
            for row in read(self.path):
                for key, value in row.items():
                    if key not in SKIP and isinstance(value, (int, float)):
                        record.add_value("scalar", f"{row['stage']}/{key}", ms.Tensor(float(value), ms.float32))
                record.record(row["global_step"])
        shutil.rmtree(final, ignore_errors=True)
        fresh.rename(final)

    def close(self):
        self.file.close()
        self.sync_summary()


class NullMetrics:
    """What a rank other than 0 of a sharded run logs: nothing (rank 0 holds the same data-parallel means)."""

    def log(self, row: dict):
        pass

    def sync_summary(self):
        pass

    def close(self):
        pass


def read(path) -> list:
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            break  # a line cut by a kill: everything after it is also from the lost tail
    return rows
