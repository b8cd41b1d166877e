"""``edit_model``: the student = the teacher with each attention module replaced and initialised.

The student shares every non-attention cell with the teacher (embedding, norms, MLPs or experts, LM head: the
same Parameter objects, one copy in memory). Its attention modules are new: copies of the source for GateSWA
(and for full-attention layers kept as they are), MLA modules initialised from the source by mindedit.edit.mla_init.
"""
import copy
from dataclasses import asdict, replace

import numpy as np
import mindspore as ms

from mindedit.attention.targets import build_attention
from mindedit.edit.config import GateSWAConfig, MLAConfig
from mindedit.edit.mla_init import init_mla_layer
from mindedit.losses import layer_error
from mindedit.models.qwen3 import CausalLM, DecoderLayer, DecoderModel


def params_numpy(cell) -> dict:
    """A cell's parameters by their name inside the cell, as float64 arrays."""
    return {name: p.asnumpy().astype(np.float64) for name, p in cell.parameters_and_names()}


def assign(cell, values: dict, where: str):
    """Sets every named parameter of ``cell`` from ``values``; the names must match exactly."""
    params = dict(cell.parameters_and_names())
    missing, unknown = sorted(set(params) - set(values)), sorted(set(values) - set(params))
    if missing or unknown:
        raise ValueError(f"{where}: initialiser gave no value for {missing} / values for unknown {unknown}")
    for name, p in params.items():
        v = np.asarray(values[name])
        if tuple(v.shape) != tuple(p.shape):
            raise ValueError(f"{where}: {name} has shape {v.shape}, the module expects {tuple(p.shape)}")
        p.set_data(ms.Tensor(v.astype(np.float32)).astype(p.dtype))


def attention_io(model, ids: np.ndarray):
    """Each layer's attention input (the normed hidden state) and output on ids [B, T], compiled: tensors."""
    # jit a plain function, not the bound method: jitting a cell's non-construct method directly makes later
    # graphs that call the cell pick up that method's graph (MindSpore 2.10)
    def tap(x):
        return model.model.attention_io(x)

    return ms.jit(tap)(ms.Tensor(np.asarray(ids, np.int32)))


def attention_inputs(model, ids: np.ndarray) -> list:
    """What each layer's attention sees (the normed hidden state) on calibration ids [B, T]: [N, hidden] each."""
    inputs, _ = attention_io(model, ids)
    return [h.asnumpy().reshape(-1, h.shape[-1]).astype(np.float64) for h in inputs]


def window_errors(teacher, target: GateSWAConfig, ids: np.ndarray) -> list:
    """For each layer, the error (mindedit.losses.layer_error) its attention would make with the window
    alone (a sliding copy of the source, gate open) against the teacher's output y, both on the teacher's own
    layer inputs for calibration ids [B, T]: what converting that layer to sliding attention costs."""
    inputs, outputs = attention_io(teacher, ids)
    sliding = asdict(replace(target, layer_types=["sliding"] * len(inputs)))
    errors = []
    for i, (layer, h, y) in enumerate(zip(teacher.model.layers, inputs, outputs)):
        s = gateswa_attention(layer.self_attn, teacher.config, sliding, i, teacher.dtype)(h)
        errors.append(float(layer_error(s, y).asnumpy()))
    return errors


def choose_full_layers(target: GateSWAConfig, errors: list) -> GateSWAConfig:
    """pattern "auto": the ``full_layers`` layers with the largest window errors stay full (ties: lower index)."""
    keep = set(sorted(range(len(errors)), key=lambda i: (-errors[i], i))[:target.full_layers])
    return replace(target, layer_types=["full" if i in keep else "sliding" for i in range(len(errors))])


def gateswa_attention(src, cfg, target: dict, layer: int, dtype):
    attn = build_attention(cfg, target, layer, dtype)
    # q/k/v/o and norms copied from the source; a gate (zeros) starts open and the sink logit at -20: equal to
    # the teacher whenever the context fits in the window
    src_params = dict(src.parameters_and_names())
    for name, p in attn.parameters_and_names():
        if name in src_params:
            p.set_data(src_params[name].value().copy())
    return attn


def mla_attention(src, cfg, target: MLAConfig, x, dtype, rng):
    attn = build_attention(cfg, asdict(target), 0, dtype)
    values = init_mla_layer(params_numpy(src), x, cfg, target, cfg.rope_theta)
    if not values:  # random init: DeepSeek-style normal(0, 0.02) weights, unit norms
        values = {}
        for name, p in attn.parameters_and_names():
            if name.endswith("norm.weight"):
                values[name] = np.ones(p.shape)
            elif name == "rotary_inv_freq":
                values[name] = p.asnumpy()
            else:
                values[name] = rng.normal(0.0, 0.02, p.shape) if name.endswith("weight") else np.zeros(p.shape)
    assign(attn, values, f"MLA init ({target.init})")
    return attn


def edit_model(teacher: CausalLM, target, calibration_ids=None, seed: int = 0) -> CausalLM:
    """Returns the student. ``calibration_ids`` [B, T] (real text) are needed by the MLA initialisers and by
    GateSWA's pattern "auto" (then ``student.window_errors`` holds the per-layer errors it chose by)."""
    cfg, dtype = teacher.config, teacher.dtype
    target.resolve(cfg)
    errors = None
    if isinstance(target, GateSWAConfig) and target.layer_types is None:  # pattern "auto"
        if calibration_ids is None:
            raise ValueError("GateSWA pattern 'auto' picks the full layers on real text: pass calibration_ids")
        errors = window_errors(teacher, target, calibration_ids)
        target = choose_full_layers(target, errors).resolve(cfg)
    acts = None
    if isinstance(target, MLAConfig) and target.init != "random":
        if calibration_ids is None:
            raise ValueError(f"MLA init {target.init!r} is activation-aware: pass calibration_ids (real text)")
        acts = attention_inputs(teacher, np.asarray(calibration_ids))
    rng = np.random.default_rng(seed)
    layers = []
    for i, layer in enumerate(teacher.model.layers):
        if isinstance(target, MLAConfig):
            attn = mla_attention(layer.self_attn, cfg, target, None if acts is None else acts[i], dtype, rng)
        else:
            attn = gateswa_attention(layer.self_attn, cfg, asdict(target), i, dtype)
        layers.append(DecoderLayer(layer.input_layernorm, attn, layer.post_attention_layernorm, layer.mlp))
    body = DecoderModel(teacher.model.embed_tokens, layers, teacher.model.norm)
    student = CausalLM(replace(cfg, attention_target=asdict(target)), dtype, body, getattr(teacher, "lm_head", None))
    student.target, student.window_errors = target, errors
    student.set_train(False)
    name_own_parameters(student, teacher)
    return student


TRAINABLE = ("attention", "attention+norms", "all")


def untie(student: CausalLM, teacher: CausalLM, trainable: str):
    """Gives the student its own copy of the shared cells that the ``trainable`` set will change, so training
    them never moves the teacher: norms for "attention+norms"; norms, MLPs/experts, embedding and head for "all"
    (which then holds a second copy of the backbone). "attention" copies nothing."""
    if trainable not in TRAINABLE:
        raise ValueError(f"trainable={trainable!r}: expected one of {TRAINABLE}")
    names = []
    if trainable != "attention":
        names = [f"layers.{i}.{part}" for i in range(len(student.model.layers))
                 for part in ("input_layernorm", "post_attention_layernorm")] + ["norm"]
    if trainable == "all":
        names += [f"layers.{i}.mlp" for i in range(len(student.model.layers))] + ["embed_tokens"]
    for path in names:
        *parents, leaf = path.split(".")
        owner = student.model
        for part in parents:
            owner = owner[int(part)] if part.isdigit() else getattr(owner, part)
        setattr(owner, leaf, _own_copy(getattr(owner, leaf)))
    if trainable == "all" and hasattr(student, "lm_head"):
        student.lm_head = _own_copy(student.lm_head)
    name_own_parameters(student, teacher)


def _own_copy(cell):
    clone = copy.deepcopy(cell)
    for (_, src), (_, dst) in zip(cell.parameters_and_names(), clone.parameters_and_names()):
        dst.set_data(src.value().copy())
    return clone


def own_parameters(student: CausalLM, teacher: CausalLM) -> dict:
    """{model path: Parameter} of the student's parameters that are not the teacher's."""
    shared = {id(p) for p in teacher.get_parameters()}
    return {name: p for name, p in student.parameters_and_names() if id(p) not in shared}


def name_own_parameters(student: CausalLM, teacher: CausalLM):
    """Graph mode needs unique Parameter names across one graph (stage 2 and evaluation run teacher and student
    together): the student's own parameters are named "student." + their path (checkpoints use the path)."""
    for name, p in own_parameters(student, teacher).items():
        p.name = "student." + name
