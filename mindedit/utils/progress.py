"""A dependency-free progress bar for long work: done/total, tokens/s and ETA, on stderr.

The first unit of work compiles the graphs (minutes on the CPU backend), so the bar says so until it is done, and
the rate and ETA are measured from the end of the first update on (steady state), not from the start.
"""
import sys
import time


class Progress:
    def __init__(self, total: int, desc: str = "", unit: str = "tok", stream=None, min_interval: float = 0.2,
                 first: str = "compiling and running the first step"):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = time.perf_counter()
        self.steady = None  # (time, done) at the end of the first update
        self.last = 0.0
        self.min_interval = min_interval
        self.postfix = ""
        if first:
            self.stream.write(f"{desc}: {first} ...\n")
            self.stream.flush()

    def update(self, n: int, postfix: str = ""):
        self.done += n
        self.postfix = postfix or self.postfix
        now = time.perf_counter()
        if self.steady is None:
            self.steady = (now, self.done)
            self.last = now
            self._draw(now)
        elif now - self.last >= self.min_interval or self.done >= self.total:
            self.last = now
            self._draw(now)

    def rate(self, now: float) -> float:
        """Units per second in the steady state (after the first update); the first update's own rate before."""
        t0, d0 = self.steady
        if now > t0 and self.done > d0:
            return (self.done - d0) / (now - t0)
        return d0 / max(t0 - self.start, 1e-9)

    def _draw(self, now):
        rate = self.rate(now)
        frac = min(self.done / self.total, 1.0) if self.total else 1.0
        steady = self.done > self.steady[1]
        eta = (self.total - self.done) / rate if rate > 0 and steady else None
        bar = "#" * int(frac * 24)
        eta_s = f"{eta:5.0f}s" if eta is not None else "    ?"
        line = (f"\r{self.desc} [{bar:<24}] {self.done}/{self.total} {self.unit} "
                f"{rate:8.1f} {self.unit}/s ETA {eta_s} {self.postfix}")
        self.stream.write(line)
        self.stream.flush()

    def close(self):
        if self.steady is not None and (self.last == 0.0 or self.done < self.total):
            self._draw(time.perf_counter())
        self.stream.write(f"  ({time.perf_counter() - self.start:.0f}s)\n")
        self.stream.flush()
