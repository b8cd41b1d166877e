"""HF checkpoint directories: ``config.json`` + ``model.safetensors`` or a sharded ``model.safetensors.index.json``."""
import json
from pathlib import Path

import mindspore  # noqa: F401  (registers bfloat16 with numpy, which safetensors.numpy needs)
from safetensors import safe_open

from mindedit.errors import MindeditError


class CheckpointError(MindeditError):
    """A checkpoint that cannot be loaded; the message names the file and the tensor or key."""


def read_config(directory: Path) -> dict:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: no config.json (expected an HF model directory or a .gguf file)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from None


def tensor_files(directory: Path) -> dict:
    """Maps each tensor name to the safetensors file that holds it."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: expected JSON with a 'weight_map' object ({e})") from None
        return {name: directory / fname for name, fname in weight_map.items()}
    single = directory / "model.safetensors"
    if not single.is_file():
        raise CheckpointError(f"{directory}: neither model.safetensors nor model.safetensors.index.json found")
    with _open(single) as f:
        return {name: single for name in f.keys()}


def _open(path: Path):
    if not path.is_file():
        raise CheckpointError(f"{path}: file listed in the index does not exist")
    try:
        return safe_open(str(path), "np")
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def read_tensors(directory: Path):
    """Yields (name, numpy array, file) for every tensor, one file open at a time."""
    by_file = {}
    for name, path in tensor_files(directory).items():
        by_file.setdefault(path, []).append(name)
    for path, names in by_file.items():
        with _open(path) as f:
            present = set(f.keys())
            for name in names:
                if name not in present:
                    raise CheckpointError(f"{path}: tensor {name!r} is listed in the index but not in the file")
                yield name, f.get_tensor(name), path
