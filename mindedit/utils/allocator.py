"""The process's memory allocator: jemalloc when the machine has it (Debian/Ubuntu package libjemalloc2).

MindSpore builds and frees millions of small graph nodes while it compiles, and its CPU kernels allocate their
buffers op by op; under glibc's malloc a fifth of a compile went to malloc's own bookkeeping and to the kernel
zeroing pages handed back and taken again (perf, docs/environment.md). With jemalloc, measured alone on the
default job's stage-1 step: the first (compiling) step 71 -> 53 s, the steady state 249 -> 283 tokens/s, peak RSS
6.0 -> 5.3 GB; arithmetic is untouched (the same kernels read the same values).

A preloaded allocator has to be in place when the process starts, so the programs (``python -m mindedit``, the
bench scripts) call ``ensure()`` first: it re-executes the same command line once with LD_PRELOAD naming
jemalloc, and every child process inherits it. The test session gets it from scripts/test.sh
(``python -m mindedit.utils.allocator`` prints the LD_PRELOAD to use). ``MINDEDIT_ALLOCATOR=system`` keeps glibc's.
"""
import ctypes.util
import os
import sys

ENV = "MINDEDIT_ALLOCATOR"   # "jemalloc" (default: when installed) | "system"
_TRIED = "MINDEDIT_ALLOCATOR_PRELOADED"


def library():
    """jemalloc's shared library as the dynamic loader finds it (e.g. libjemalloc.so.2), or None."""
    return ctypes.util.find_library("jemalloc")


def active() -> str:
    """The allocator this process really runs on: "jemalloc" if its library is mapped, else "glibc"."""
    try:
        with open("/proc/self/maps") as f:
            return "jemalloc" if "libjemalloc" in f.read() else "glibc"
    except OSError:
        return "glibc"


def preload() -> str:
    """The LD_PRELOAD a mindedit process should start with: the current one, with jemalloc's library in front if it
    is installed, asked for (the default) and not already there."""
    current = os.environ.get("LD_PRELOAD", "")
    choice = os.environ.get(ENV, "jemalloc")
    if choice not in ("jemalloc", "system"):
        raise SystemExit(f"{ENV}={choice!r}: expected 'jemalloc' (the default) or 'system'")
    lib = library() if choice == "jemalloc" and sys.platform.startswith("linux") else None
    return current if lib is None or "jemalloc" in current else " ".join(filter(None, [lib, current]))


def ensure():
    """Re-executes this process's command line with ``preload()`` if that differs from what it started with and
    jemalloc is not loaded yet; otherwise returns. Call it before anything else happens (it replaces the process)."""
    want = preload()
    if want == os.environ.get("LD_PRELOAD", "") or os.environ.get(_TRIED) or active() == "jemalloc":
        return
    env = dict(os.environ, LD_PRELOAD=want, **{_TRIED: "1"})  # once: a preload that fails does not loop
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


if __name__ == "__main__":
    print(preload())  # scripts/test.sh: the test session's LD_PRELOAD
