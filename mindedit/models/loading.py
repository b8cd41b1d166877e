"""``from_pretrained``: an HF directory or a GGUF file -> a ready CausalLM (weights checked name by name)."""
from pathlib import Path

import numpy as np
import mindspore as ms

from mindedit.errors import MindeditError
from mindedit.io import gguf as gguf_io
from mindedit.io import hf as hf_io
from mindedit.io.hf import CheckpointError
from mindedit.models.config import ModelConfig
from mindedit.models.qwen3 import CausalLM

DTYPES = {"float32": ms.float32, "bfloat16": ms.bfloat16, "float16": ms.float16}


def resolve_dtype(dtype):
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise MindeditError(f"dtype {dtype!r}: expected one of {sorted(DTYPES)}")
        return DTYPES[dtype]
    return dtype


def load_config(path) -> ModelConfig:
    path = Path(path)
    if path.suffix == ".gguf":
        return ModelConfig.from_hf_dict(gguf_io.read_config(path), source=str(path))
    return ModelConfig.from_hf_dict(hf_io.read_config(path), source=str(path / "config.json"))


def load_weights(model, tensors, source: str):
    """Assigns (name, array, file) triples to the model's parameters. Every parameter must be given exactly
    once with its exact shape; a tensor the model does not have is an error (nothing is silently dropped)."""
    params = dict(model.parameters_and_names())
    tied = model.config.tie_word_embeddings
    seen = set()
    for name, array, path in tensors:
        if tied and name == "lm_head.weight":
            continue  # some tied checkpoints store the head anyway; the embedding is the one used
        p = params.get(name)
        if p is None:
            raise CheckpointError(f"{path}: unexpected tensor {name!r} (not a parameter of "
                                  f"{model.config.model_type} with this config)")
        if tuple(array.shape) != tuple(p.shape):
            raise CheckpointError(f"{path}: tensor {name!r} has shape {tuple(array.shape)}, "
                                  f"the model expects {tuple(p.shape)}")
        if array.dtype != np.float32 and str(array.dtype) != "bfloat16":
            array = array.astype(np.float32)
        p.set_data(ms.Tensor(array).astype(p.dtype))
        seen.add(name)
    missing = sorted(set(params) - seen)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"{source}: missing tensors {missing[:5]}{more}")


def from_pretrained(path, dtype="float32") -> CausalLM:
    """Builds the model described by ``path`` (HF directory or .gguf file) and loads its weights."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model directory or .gguf file")
    dtype = resolve_dtype(dtype)
    if path.suffix == ".gguf":
        reader = gguf_io.open_reader(path)
        raw = gguf_io.read_config(path, reader)
        cfg = ModelConfig.from_hf_dict(raw, source=str(path))
        tensors = gguf_io.read_tensors(path, raw, reader)
    else:
        cfg = load_config(path)
        tensors = hf_io.read_tensors(path)
    model = CausalLM(cfg, dtype)
    model.set_train(False)
    load_weights(model, tensors, str(path))
    return model
