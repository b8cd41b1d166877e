"""Explicit SPMD parallelism on MindSpore collectives (DESIGN.md, "Parallelism"). Model code never imports this."""
from mindedit.parallel.dims import ParallelDims, ParallelError

__all__ = ["ParallelDims", "ParallelError"]
