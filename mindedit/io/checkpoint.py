"""Atomic training checkpoints.

A checkpoint is a directory ``<run>/checkpoints/<stage>-<step:06d>/`` with
    weights.safetensors   the student's own parameters (everything not shared with the teacher), by model path
    optimizer.safetensors every optimizer state tensor, by Parameter name
    state.json            stage, step, data position, token counts, RNG seed, and the sha256 of both files
It is assembled in a temp directory and renamed into place, so a directory with that name is complete. On resume
the newest checkpoint whose state.json parses and whose files match their hashes is used; anything else is
reported and skipped, never loaded. Only the newest ``keep`` checkpoints are kept.
"""
import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save as to_bytes, save_file

from mindedit.utils.files import atomic_dir, atomic_write_bytes, atomic_write_json, sha256_file

FILES = ("weights.safetensors", "optimizer.safetensors")


def save(ckpt_dir, name: str, weights: dict, optimizer: dict, state: dict, keep: int = 2) -> Path:
    """weights / optimizer: {name: numpy array} (full, unsharded tensors: mindedit.parallel.Layout.gather makes
    them, so a checkpoint loads under any parallel layout). Returns the checkpoint directory."""
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / name
    with atomic_dir(final) as tmp:
        save_file({k: np.array(v, order="C") for k, v in weights.items()}, str(tmp / FILES[0]))  # (keeps 0-d)
        save_file({k: np.array(v, order="C") for k, v in optimizer.items()}, str(tmp / FILES[1]))
        state = dict(state, sha256={f: sha256_file(tmp / f) for f in FILES})
        atomic_write_json(tmp / "state.json", state)
    for old in sorted(complete_dirs(ckpt_dir))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete_dirs(ckpt_dir) -> list:
    return [d for d in Path(ckpt_dir).glob("stage*-*") if d.is_dir()]


def verify(path) -> dict:
    """state.json of a checkpoint after checking both files against their hashes; ValueError says what is wrong."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"state.json unreadable ({e})") from None
    for f in FILES:
        if not (path / f).is_file():
            raise ValueError(f"{f} missing")
        if sha256_file(path / f) != state.get("sha256", {}).get(f):
            raise ValueError(f"{f} does not match its sha256 in state.json (truncated or corrupt)")
    return state


def latest(ckpt_dir, warn=print):
    """(path, state) of the newest valid checkpoint, or None. Invalid ones are skipped with a warning."""
    found = sorted(complete_dirs(ckpt_dir), reverse=True)
    for path in found:
        try:
            return path, verify(path)
        except ValueError as e:
            warn(f"warning: skipping checkpoint {path}: {e}")
    if found:
        warn(f"warning: no valid checkpoint in {ckpt_dir}: training starts over from the beginning")
    return None


def load(path, weights: dict, optimizer: dict, take=None, live: bool = False):
    """Sets the given Parameters from a verified checkpoint; every name must be present. ``take(name, full)``
    (a sharded run: Layout.take) cuts this rank's piece out of each full tensor; the result must fit the
    Parameter's shape. ``live``: as set_params."""
    for file, params in ((FILES[0], weights), (FILES[1], optimizer)):
        set_params(Path(path) / file, params, take, live)


def set_params(file, params: dict, take=None, live: bool = False):
    """Sets ``params`` {name: Parameter} from the safetensors ``file``, which must hold every name. ``live``: graphs
    that have already run read these Parameters: write into their storage through a compiled assign (set_data
    gives a Parameter new storage, which such graphs never see: docs/environment.md)."""
    import mindspore as ms
    values = load_file(str(file))
    missing = sorted(set(params) - set(values))
    if missing:
        raise ValueError(f"{file}: no tensor {missing[0]!r} ({len(missing)} missing): the checkpoint is "
                         f"from a different job configuration")
    tensors = []
    for name, p in params.items():
        v = take(name, values[name]) if take else values[name]
        if tuple(v.shape) != tuple(p.shape):
            raise ValueError(f"{file}: {name} has shape {v.shape}, expected {tuple(p.shape)}")
        tensors.append(ms.Tensor(v).astype(p.dtype))
    if live and params:
        live_writer(tuple(params.values()))(tuple(tensors))
    else:
        for p, t in zip(params.values(), tensors):
            p.set_data(t)


_WRITERS = {}


def live_writer(params: tuple):
    """One compiled graph per tuple of Parameters that assigns given values to them in place."""
    import mindspore as ms
    from mindspore import ops
    key = tuple(id(p) for p in params)
    if key not in _WRITERS:
        def write(values):
            for p, v in zip(params, values):
                ops.assign(p, v)
            return values[0]

        _WRITERS[key] = ms.jit(write)
    return _WRITERS[key]


# -- milestones: the student's weights at chosen steps, kept for the learning curve (mindedit.job.learning_curve)
def save_milestone(run_dir, name: str, weights: dict, state: dict) -> Path:
    """<run_dir>/milestones/<name>.safetensors with the full weights and the training ``state`` (tokens per
    stage, global step) as its metadata; written atomically."""
    out = Path(run_dir) / "milestones" / f"{name}.safetensors"
    atomic_write_bytes(out, to_bytes({k: np.array(v, order="C") for k, v in weights.items()},
                                     metadata={"state": json.dumps(state)}))
    return out


def milestones(run_dir) -> list:
    """[(path, state)] of the kept milestones in training order."""
    from safetensors import safe_open
    found = []
    for path in Path(run_dir, "milestones").glob("*.safetensors"):
        with safe_open(str(path), "np") as f:
            found.append((path, json.loads(f.metadata()["state"])))
    return sorted(found, key=lambda m: m[1]["global_step"])
