"""Target architectures: what each attention module becomes. Validated against the source model's shapes."""
from dataclasses import dataclass, field
from typing import Optional

from mindedit.errors import MindeditError

MLA_INITS = ("partial_rope_svd", "rorope_svd", "random")
LATENT_BALANCES = ("none", "norm", "sensitivity")
GATES = ("elementwise", "headwise", "none")


class TargetError(MindeditError):
    """A target configuration that cannot be built for this model; the message names the key and value."""


@dataclass
class MLAConfig:
    kv_lora_rank: int
    qk_rope_head_dim: int
    qk_nope_head_dim: Optional[int] = None   # default: the source head_dim
    v_head_dim: Optional[int] = None         # default: the source head_dim
    q_lora_rank: Optional[int] = None        # None: a full-rank q_proj
    q_norm: Optional[bool] = None            # per-head query RMSNorm; default: the source has q/k norms
                                             # (and export_compatible is off)
    latent_norm: bool = True                 # kv_a_layernorm on the latent (DeepSeek layout)
    init: str = "rorope_svd"
    export_compatible: bool = True           # a student DeepSeek-V3 can express (see resolve); false: any frequencies,
                                             # a per-head query norm, the source's query bias
    rope_theta: Optional[float] = None       # resolved: the rope key's standard frequencies (export_compatible only)
    freq_fold: Optional[bool] = None         # export_compatible: each kept frequency's channel also draws on the
                                             # left-out neighbours above it (TransMLA's FreqFold; mla_init);
                                             # default: on with export_compatible
    latent_balance: str = "sensitivity"      # how the latent weighs keys against values: none, norm (equal norms,
                                             # TransMLA's BKV), sensitivity (by the queries / o_proj that read them,
                                             # then equal norms)
    kind: str = field(default="mla", init=False)

    def resolve(self, cfg, where: str = "target") -> "MLAConfig":
        """Fills defaults from the source config and checks every value; returns self."""
        d = cfg.head_dim
        self.qk_nope_head_dim = self.qk_nope_head_dim or d
        self.v_head_dim = self.v_head_dim or d
        if self.export_compatible and self.q_norm:
            raise TargetError(f"{where}.q_norm=true: DeepSeek-V3 has no per-head query norm; set "
                              f"export_compatible: false to keep one")
        if self.q_norm is None:
            self.q_norm = cfg.qk_norm and not self.export_compatible
        if self.init not in MLA_INITS:
            raise TargetError(f"{where}.init={self.init!r}: expected one of {MLA_INITS}")
        if self.latent_balance not in LATENT_BALANCES:
            raise TargetError(f"{where}.latent_balance={self.latent_balance!r}: expected one of {LATENT_BALANCES}")
        if self.qk_rope_head_dim <= 0 or self.qk_rope_head_dim % 2:
            raise TargetError(f"{where}.qk_rope_head_dim={self.qk_rope_head_dim}: expected a positive even number")
        if self.qk_rope_head_dim > cfg.num_key_value_heads * d:
            raise TargetError(f"{where}.qk_rope_head_dim={self.qk_rope_head_dim}: at most num_key_value_heads x "
                              f"head_dim = {cfg.num_key_value_heads * d} rotary dimensions exist in the source")
        max_rank = min(cfg.hidden_size, cfg.num_key_value_heads * (self.qk_nope_head_dim + self.v_head_dim))
        if not 0 < self.kv_lora_rank <= max_rank:
            raise TargetError(f"{where}.kv_lora_rank={self.kv_lora_rank}: expected 1..{max_rank} (min of hidden_size "
                              f"and the rank of the source's stacked key/value projections)")
        if self.q_lora_rank is not None and not 0 < self.q_lora_rank <= cfg.hidden_size:
            raise TargetError(f"{where}.q_lora_rank={self.q_lora_rank}: expected 1..{cfg.hidden_size} or null")
        if self.init != "random" and (self.qk_nope_head_dim != d or self.v_head_dim != d):
            raise TargetError(f"{where}: init {self.init!r} keeps the source head_dim={d}; qk_nope_head_dim="
                              f"{self.qk_nope_head_dim} and v_head_dim={self.v_head_dim} need init: random")
        if self.export_compatible:
            self._resolve_compatible(cfg, where)
        elif self.rope_theta is not None:
            raise TargetError(f"{where}.rope_theta={self.rope_theta}: only with export_compatible: true (otherwise "
                              f"the init chooses each rotary channel's frequency)")
        elif self.freq_fold:
            raise TargetError(f"{where}.freq_fold=true: only with export_compatible: true (otherwise the init "
                              f"chooses each rotary channel's frequency, and none is left out to fold)")
        if self.freq_fold is None:
            self.freq_fold = self.export_compatible
        return self

    def _resolve_compatible(self, cfg, where):
        """What DeepSeek-V3 (HF transformers, vLLM, SGLang) can express: rotary frequencies the standard ones for
        qk_rope_head_dim (theta^(-2i/rope)), no per-head query norm, a latent norm, no bias on a full-rank q_proj.
        The rope key keeps every k-th source frequency (k = head_dim // qk_rope_head_dim), which are exactly the
        standard ones of rope_theta = source_theta^(k * rope / head_dim); the init fits the source's normed (Qwen3)
        or biased (Qwen2) queries by least squares."""
        d, rope = cfg.head_dim, self.qk_rope_head_dim
        if not self.latent_norm:
            raise TargetError(f"{where}.latent_norm=false: DeepSeek-V3 always norms the latent; set "
                              f"export_compatible: false")
        if rope > d:
            raise TargetError(f"{where}.qk_rope_head_dim={rope}: export_compatible keeps source frequencies, at most "
                              f"head_dim={d}; set export_compatible: false for more")
        step = d // rope
        theta = float(cfg.rope_theta ** (step * rope / d))
        if self.rope_theta is not None and abs(self.rope_theta - theta) > 1e-6 * theta:
            raise TargetError(f"{where}.rope_theta={self.rope_theta}: export_compatible derives it from the source "
                              f"({theta:g} for qk_rope_head_dim={rope}); leave it unset")
        self.rope_theta = theta


@dataclass
class GateSWAConfig:
    window: int
    pattern: Optional[str] = "SSSSSF"        # repeated over the layers; S sliding, F full; or "auto" (below)
    full_layers: Optional[int] = None        # with pattern "auto": how many layers keep full attention, chosen at
                                             # conversion as those the window alone hurts most (calibration text)
    layer_types: Optional[list] = None       # explicit per-layer "sliding" / "full" (overrides pattern)
    sink_tokens: int = 4
    sink_logit: bool = False
    gate: str = "elementwise"
    gate_full_layers: bool = False
    require_full_layer: bool = True
    kind: str = field(default="gateswa", init=False)

    def resolve(self, cfg, where: str = "target") -> "GateSWAConfig":
        n = cfg.num_hidden_layers
        if not isinstance(self.window, int) or self.window <= 0:
            raise TargetError(f"{where}.window={self.window!r}: expected a positive number of tokens")
        if self.sink_tokens < 0:
            raise TargetError(f"{where}.sink_tokens={self.sink_tokens}: expected >= 0")
        if self.gate not in GATES:
            raise TargetError(f"{where}.gate={self.gate!r}: expected one of {GATES}")
        if self.pattern == "auto":
            low = 1 if self.require_full_layer else 0
            if not isinstance(self.full_layers, int) or not low <= self.full_layers <= n:
                raise TargetError(f"{where}.full_layers={self.full_layers!r}: pattern 'auto' needs the number of "
                                  f"full-attention layers to keep, {low}..{n}")
        elif self.full_layers is not None:
            raise TargetError(f"{where}.full_layers={self.full_layers!r}: only used with pattern: auto")
        if self.layer_types is not None:
            bad = [t for t in self.layer_types if t not in ("sliding", "full")]
            if len(self.layer_types) != n or bad:
                raise TargetError(f"{where}.layer_types: expected {n} entries of 'sliding'/'full', got "
                                  f"{len(self.layer_types)} entries" + (f" including {bad[0]!r}" if bad else ""))
            if self.pattern == "auto" and self.layer_types.count("full") != self.full_layers:
                raise TargetError(f"{where}.layer_types: {self.layer_types.count('full')} full layers, but "
                                  f"full_layers={self.full_layers}")
        elif self.pattern == "auto":
            return self  # layer_types are chosen by mindedit.edit.surgery.edit_model on calibration text
        else:
            if not self.pattern or set(self.pattern) - {"S", "F"}:
                raise TargetError(f"{where}.pattern={self.pattern!r}: expected a string of S (sliding) and F (full)")
            self.layer_types = ["sliding" if self.pattern[i % len(self.pattern)] == "S" else "full"
                                for i in range(n)]
        if self.require_full_layer and "full" not in self.layer_types:
            raise TargetError(f"{where}: the layer pattern leaves no full-attention layer (set require_full_layer: "
                              f"false to allow an all-sliding model)")
        return self

    def num_full(self) -> int:
        if self.layer_types is None:
            return self.full_layers
        return sum(t == "full" for t in self.layer_types)


def target_from_dict(d: dict, where: str = "target"):
    d = dict(d)
    kind = d.pop("kind", None)
    cls = {"mla": MLAConfig, "gateswa": GateSWAConfig}.get(kind)
    if cls is None:
        raise TargetError(f"{where}.kind={kind!r}: expected 'mla' or 'gateswa'")
    known = {f for f in cls.__dataclass_fields__ if f != "kind"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise TargetError(f"{where}: unknown key {unknown[0]!r} for kind {kind!r}; expected some of {sorted(known)}")
    try:
        return cls(**d)
    except TypeError as e:
        raise TargetError(f"{where}: {e}") from None

