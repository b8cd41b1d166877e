"""ParallelDims: the degrees of data, tensor, pipeline and expert parallelism, checked against a model, and the
rank groups they imply.

Rank layout (tensor innermost, so a TP group sits on neighbouring devices of one node; pipeline outermost, so
stages map to nodes):

    rank = (pp_rank * dp + dp_rank) * tp + tp_rank

Expert parallelism reuses the dp x tp ranks of one pipeline stage: ``ep`` consecutive ranks of that block form
an EP group, each holding num_experts / ep experts.
"""
from dataclasses import dataclass

from mindedit.errors import MindeditError


class ParallelError(MindeditError):
    """A layout that cannot run; the message names the degree, the model field and why."""


@dataclass(frozen=True)
class ParallelDims:
    dp: int = 1
    tp: int = 1
    pp: int = 1
    ep: int = 1

    @property
    def world(self) -> int:
        return self.dp * self.tp * self.pp

    def validate(self, cfg, world: int = None, where: str = "parallel") -> "ParallelDims":
        """Checks the degrees against a ModelConfig (and a launched world size); returns self."""
        for name in ("dp", "tp", "pp", "ep"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ParallelError(f"{where}.{name}={v!r}: expected a positive integer")
        if world is not None and world != self.world:
            raise ParallelError(f"{where}: dp*tp*pp = {self.dp}*{self.tp}*{self.pp} = {self.world}, but {world} "
                                f"processes were launched")
        tp = self.tp
        need = {"num_attention_heads": cfg.num_attention_heads, "vocab_size": cfg.vocab_size}
        if cfg.num_experts:
            need["moe_intermediate_size"] = cfg.moe_intermediate_size
        if not all(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers)):  # some dense MLP layers
            need["intermediate_size"] = cfg.intermediate_size
        for field, value in need.items():
            if value % tp:
                raise ParallelError(f"{where}.tp={tp}: does not divide {field}={value}")
        kv = cfg.num_key_value_heads
        if kv % tp and tp % kv:
            raise ParallelError(f"{where}.tp={tp}: num_key_value_heads={kv} can neither be split over tp ranks nor "
                                f"replicated evenly (one of them must divide the other)")
        if self.pp > cfg.num_hidden_layers:
            raise ParallelError(f"{where}.pp={self.pp}: more pipeline stages than num_hidden_layers="
                                f"{cfg.num_hidden_layers}")
        if self.ep > 1:
            if not cfg.num_experts:
                raise ParallelError(f"{where}.ep={self.ep}: the model has no experts (num_experts=0)")
            if (self.dp * tp) % self.ep:
                raise ParallelError(f"{where}.ep={self.ep}: does not divide dp*tp={self.dp * tp} (the ranks of one "
                                    f"pipeline stage)")
            if cfg.num_experts % self.ep:
                raise ParallelError(f"{where}.ep={self.ep}: does not divide num_experts={cfg.num_experts}")
        return self

    # -- coordinates and groups (lists of global ranks) ---------------------------------------------------------
    def coords(self, rank: int) -> dict:
        if not 0 <= rank < self.world:
            raise ParallelError(f"rank {rank}: expected 0..{self.world - 1}")
        tp_rank, rest = rank % self.tp, rank // self.tp
        dp_rank, pp_rank = rest % self.dp, rest // self.dp
        local = dp_rank * self.tp + tp_rank  # position inside the pipeline stage's dp x tp block
        return {"dp": dp_rank, "tp": tp_rank, "pp": pp_rank, "ep": local % self.ep}

    def rank(self, dp: int = 0, tp: int = 0, pp: int = 0) -> int:
        return (pp * self.dp + dp) * self.tp + tp

    def tp_group(self, rank: int) -> list:
        c = self.coords(rank)
        return [self.rank(c["dp"], t, c["pp"]) for t in range(self.tp)]

    def dp_group(self, rank: int) -> list:
        c = self.coords(rank)
        return [self.rank(d, c["tp"], c["pp"]) for d in range(self.dp)]

    def pp_group(self, rank: int) -> list:
        c = self.coords(rank)
        return [self.rank(c["dp"], c["tp"], p) for p in range(self.pp)]

    def ep_group(self, rank: int) -> list:
        start = rank - self.coords(rank)["ep"]  # EP groups are runs of ep consecutive ranks inside a stage's block
        return list(range(start, start + self.ep))

    def stage_layers(self, num_layers: int, stage: int) -> range:
        """Contiguous layers of pipeline stage ``stage``; the first stages take one more when uneven."""
        size, extra = divmod(num_layers, self.pp)
        start = stage * size + min(stage, extra)
        return range(start, start + size + (stage < extra))
