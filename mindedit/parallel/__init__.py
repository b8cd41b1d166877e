"""Explicit SPMD parallelism on MindSpore collectives (DESIGN.md, "Parallelism"). Model code never imports this.

    dims.py         ParallelDims: degrees, validation against a model, rank layout and groups
    comm.py         process groups and communication cells with written-out backward (Megatron f/g, gathers)
    tensor.py       column/row-parallel linears, vocab-parallel embedding and vocab reductions for the losses
    expert.py       expert-parallel MoE: all-gather, sparse local experts, sum
    parallelize.py  parallelize(models, dims, rank, world) -> Layout (gradient reduction, global norm, full
                    checkpoints)
"""
from mindedit.parallel.dims import ParallelDims, ParallelError

__all__ = ["ParallelDims", "ParallelError"]
