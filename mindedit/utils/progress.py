"""A dependency-free progress bar for long work: done/total, tokens/s and ETA, on stderr."""
import sys
import time


class Progress:
    def __init__(self, total: int, desc: str = "", unit: str = "tok", stream=None, min_interval: float = 0.2):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = time.perf_counter()
        self.last = 0.0
        self.min_interval = min_interval
        self.postfix = ""

    def update(self, n: int, postfix: str = ""):
        self.done += n
        self.postfix = postfix or self.postfix
        now = time.perf_counter()
        if now - self.last >= self.min_interval or self.done >= self.total:
            self.last = now
            self._draw(now)

    def _draw(self, now):
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        frac = min(self.done / self.total, 1.0) if self.total else 1.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        bar = "#" * int(frac * 24)
        eta_s = f"{eta:5.0f}s" if eta != float("inf") else "    ?"
        line = (f"\r{self.desc} [{bar:<24}] {self.done}/{self.total} {self.unit} "
                f"{rate:8.1f} {self.unit}/s ETA {eta_s} {self.postfix}")
        self.stream.write(line)
        self.stream.flush()

    def close(self):
        if self.last == 0.0 or self.done < self.total:
            self._draw(time.perf_counter())
        self.stream.write("\n")
        self.stream.flush()
