"""Training metrics, written twice: ``metrics.jsonl`` (one JSON object per step, the source of truth) and
MindSpore ``SummaryRecord`` scalars under ``summary/`` for MindInsight.

On resume the log is cut back to the checkpoint (steps after it will be recomputed) and the summary directory is
rebuilt from the log, so every tag has each step exactly once."""
import json
import shutil
from pathlib import Path

from mindedit.utils.files import atomic_write_text

SKIP = {"stage", "step", "global_step", "time"}


class Metrics:
    def __init__(self, run_dir, keep_until: int = 0):
        """keep_until: global steps <= this are kept from an earlier run (0: start a new log)."""
        self.path = Path(run_dir) / "metrics.jsonl"
        self.summary_dir = Path(run_dir) / "summary"
        rows = [r for r in read(self.path) if r["global_step"] <= keep_until] if keep_until else []
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))
        shutil.rmtree(self.summary_dir, ignore_errors=True)
        self.summary_dir.mkdir(parents=True)
        from mindspore.train import SummaryRecord
        self.record = SummaryRecord(str(self.summary_dir))
        for r in rows:
            self._summary(r)
        self.record.flush()
        self.file = open(self.path, "a")

    def _summary(self, row):
        import mindspore as ms
        for key, value in row.items():
            if key not in SKIP and isinstance(value, (int, float)):
                self.record.add_value("scalar", f"{row['stage']}/{key}", ms.Tensor(float(value), ms.float32))
        self.record.record(row["global_step"])

    def log(self, row: dict):
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        self._summary(row)

    def close(self):
        self.file.close()
        self.record.close()


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
