"""mindedit: convert a trained LLM's attention to MLA or GateSWA by progressive distillation, on MindSpore."""
import os

__version__ = "0.1.0"

# The triton attention face runs its kernels on Triton's CPU interpreter, which must be chosen before triton is
# first imported, and importing MindSpore imports triton (ascend_ops/triton/face.py)
if os.environ.get("MINDEDIT_ATTENTION") == "triton":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import ascend_ops  # noqa: E402,F401 (first: it sets the OpenMP wait policy before MindSpore loads libgomp)
