"""``edit_model``: the student = the teacher with each attention module replaced and initialised.

The student shares every non-attention cell with the teacher (embedding, norms, MLPs or experts, LM head: the
same Parameter objects, one copy in memory). Its attention modules are new: copies of the source for GateSWA
(and for full-attention layers kept as they are), MLA modules initialised from the source by mindedit.edit.mla_init.
"""
import numpy as np
import mindspore as ms

from mindedit.attention import GQAAttention
from mindedit.attention.gateswa import GateSWAAttention
from mindedit.attention.mla import MLAAttention
from mindedit.edit.config import GateSWAConfig, MLAConfig
from mindedit.edit.mla_init import init_mla_layer
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


def attention_inputs(model, ids: np.ndarray) -> list:
    """What each layer's attention sees (the normed hidden state) on calibration ids [B, T]: [N, hidden] each."""
    # jit a plain function, not the bound method: jitting a cell's non-construct method directly makes later
    # graphs that call the cell pick up that method's graph (MindSpore 2.10)
    def tap(x):
        return model.model.attention_io(x)

    inputs, _ = ms.jit(tap)(ms.Tensor(ids.astype(np.int32)))
    return [h.asnumpy().reshape(-1, h.shape[-1]).astype(np.float64) for h in inputs]


def copy_of(src: GQAAttention, cfg, dtype) -> GQAAttention:
    dst = GQAAttention(cfg, dtype)
    assign(dst, params_numpy(src), "copy of the source attention")
    return dst


def gateswa_attention(src, cfg, target: GateSWAConfig, layer: int, dtype):
    sliding = target.layer_types[layer] == "sliding"
    if not sliding and not target.gate_full_layers:
        return copy_of(src, cfg, dtype)
    attn = GateSWAAttention(cfg, target.window if sliding else 0, target.sink_tokens if sliding else 0,
                            target.sink_logit and sliding, target.gate, dtype)
    # q/k/v/o and norms copied from the source; the gate (zeros) starts open and the sink logit at -20: equal to
    # the teacher whenever the context fits in the window
    src_params = dict(src.parameters_and_names())
    for name, p in attn.parameters_and_names():
        if name in src_params:
            p.set_data(src_params[name].value().copy())
    return attn


def mla_attention(src, cfg, target: MLAConfig, x, dtype, rng):
    attn = MLAAttention(cfg, target, dtype)
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
    """Returns the student. ``calibration_ids`` [B, T] (real text) are needed by the MLA initialisers."""
    cfg, dtype = teacher.config, teacher.dtype
    target.resolve(cfg)
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
            attn = gateswa_attention(layer.self_attn, cfg, target, i, dtype)
        layers.append(DecoderLayer(layer.input_layernorm, attn, layer.post_attention_layernorm, layer.mlp))
    body = DecoderModel(teacher.model.embed_tokens, layers, teacher.model.norm)
    student = CausalLM(cfg, dtype, body, getattr(teacher, "lm_head", None))
    # Graph mode needs unique Parameter names across one graph (stage 2 and evaluation run teacher and student
    # together): the student's own parameters carry a "student." prefix; checkpoint names come from the path.
    for name, p in student.parameters_and_names():
        if "self_attn" in name:
            p.name = "student." + name
    student.target = target
    student.set_train(False)
    return student
