"""The Qwen3-family decoder: Qwen3, Qwen3-MoE, Qwen2/2.5 and Llama-shaped models by config flags.

Read top to bottom: MLP, sparse MoE block, decoder layer, model, causal LM. Parameter names are HF's, so a
checkpoint maps one to one. The attention of each layer is a replaceable part: anything with
``construct(x, cache=None, pos=None)`` and ``init_cache(batch, capacity)`` (see mindedit/attention/); mindedit.edit
swaps it.
No parallel logic lives here (mindedit/parallel shards a built model).
"""
import mindspore as ms
from mindspore import mint, nn, ops

from ascend_ops import GroupedMatmul, TokenPermute
from mindedit.attention import GQAAttention
from mindedit.attention.targets import build_attention
from mindedit.layers import Embedding, RMSNorm, linear
from mindedit.models.config import ModelConfig


class MLP(nn.Cell):
    """SwiGLU: down(silu(gate(x)) * up(x))."""
    TP_PLAN = {"gate_proj": "colwise:rows", "up_proj": "colwise:rows", "down_proj": "rowwise:rows"}  # rows: even split

    def __init__(self, hidden: int, intermediate: int, dtype):
        super().__init__()
        self.gate_proj = linear(hidden, intermediate, False, dtype)
        self.up_proj = linear(hidden, intermediate, False, dtype)
        self.down_proj = linear(intermediate, hidden, False, dtype)

    def construct(self, x):
        return self.down_proj(mint.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class SparseMoE(nn.Cell):
    """Qwen3-MoE block: softmax router over ``num_experts``, top-k experts per token, optional renormalisation.

    Sparse dispatch: the T x k (token, choice) rows are sorted by expert (ascend_ops.TokenPermute: plain ops, CANN's
    MoeTokenPermute on a 910B), each expert runs on its own rows only (one grouped matmul per projection:
    ascend_ops.GroupedMatmul, CANN's on a 910B, a C++ kernel on the CPU), and the rows are put back in token order
    and mixed with the router weights (MoeTokenUnpermute on a 910B): T x k rows of expert FLOPs instead of
    T x num_experts. ``all_experts`` (every expert on every token, zero weights for the unchosen) is the oracle the
    tests hold it to. Parallel variants (mindedit/parallel/expert.py) override ``experts_on_rows`` or ``construct``.
    """

    def __init__(self, cfg: ModelConfig, dtype):
        super().__init__()
        self.num_experts = cfg.num_experts
        self.top_k = cfg.num_experts_per_tok
        self.norm_topk_prob = cfg.norm_topk_prob
        self.gate = linear(cfg.hidden_size, cfg.num_experts, False, dtype)
        self.experts = nn.CellList([MLP(cfg.hidden_size, cfg.moe_intermediate_size, dtype)
                                    for _ in range(cfg.num_experts)])
        self.gmm, self.permute = GroupedMatmul(), TokenPermute()

    def route(self, x):
        """x [..., hidden] -> (weights [..., k] float32, expert ids [..., k] int32) of each token's top-k."""
        probs = mint.nn.functional.softmax(self.gate(x).astype(ms.float32), dim=-1)
        top, idx = ops.topk(probs, self.top_k)
        if self.norm_topk_prob:
            top = top / top.sum(-1, keepdims=True)
        return top, idx.astype(ms.int32)

    def routing_weights(self, x):
        """[..., num_experts] mixing weights, zero outside each token's top-k."""
        top, idx = self.route(x)
        onehot = ops.one_hot(idx, self.num_experts, ms.Tensor(1.0, ms.float32), ms.Tensor(0.0, ms.float32))
        return (onehot * top.unsqueeze(-1)).sum(-2).astype(x.dtype)

    def expert_weights(self, name):
        """[E, out, in]: projection ``name`` of the experts this block runs, stacked in expert order."""
        return ops.stack([getattr(e, name).weight for e in self.experts])

    def experts_on_rows(self, rows, offsets):
        """rows [N, hidden] sorted by expert (rows offsets[e]..offsets[e+1]-1 are expert e's) -> [N, hidden]."""
        h = mint.nn.functional.silu(self.gmm(rows, self.expert_weights("gate_proj"), offsets)) * \
            self.gmm(rows, self.expert_weights("up_proj"), offsets)
        return self.gmm(h, self.expert_weights("down_proj"), offsets)

    def dispatch(self, x, top, idx, runs: int):
        """x [N, hidden] with each row's top-k weights and expert ids [N, k] -> [N, hidden]: the (token, choice)
        rows sorted by expert, experts 0..runs-1 (the ones this block holds) each on its own rows, the rows of
        any other expert zero, put back in token order and mixed by the weights."""
        rows, back = self.permute.permute(x, idx)
        counts = ops.one_hot(idx.reshape(-1), self.num_experts, ms.Tensor(1, ms.int32),
                             ms.Tensor(0, ms.int32)).sum(0)
        offsets = mint.cat([ops.zeros((1,), ms.int32), ops.cumsum(counts[:runs], 0).astype(ms.int32)])
        out = self.experts_on_rows(rows, offsets)
        if runs < self.num_experts:  # rows past the last held expert's: not computed (unspecified on CANN)
            held = ops.arange(0, rows.shape[0], dtype=ms.int32).reshape(-1, 1) < offsets[runs]
            out = mint.where(held, out, ops.zeros((), out.dtype))
        return self.permute.unpermute(out, back, top)

    def construct(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        top, idx = self.route(x)
        return self.dispatch(x, top, idx, self.num_experts).reshape(shape)

    def all_experts(self, x):
        """Every expert on every token, mixed by the routing weights (zero for the unchosen): the oracle."""
        weights = self.routing_weights(x)
        out = ops.zeros_like(x)
        for e, expert in enumerate(self.experts):
            out = out + weights[..., e:e + 1] * expert(x)
        return out


class DecoderLayer(nn.Cell):
    """Assembled from parts, so that a converted model can reuse the teacher's norms and MLP (the same cells,
    hence the same Parameters) around a new attention."""

    def __init__(self, input_layernorm, self_attn, post_attention_layernorm, mlp):
        super().__init__()
        self.input_layernorm = input_layernorm
        self.self_attn = self_attn
        self.post_attention_layernorm = post_attention_layernorm
        self.mlp = mlp

    @classmethod
    def build(cls, cfg: ModelConfig, layer_idx: int, dtype):
        mlp = SparseMoE(cfg, dtype) if cfg.is_moe_layer(layer_idx) else MLP(cfg.hidden_size, cfg.intermediate_size,
                                                                            dtype)
        attn = (build_attention(cfg, cfg.attention_target, layer_idx, dtype) if cfg.attention_target
                else GQAAttention(cfg, dtype))
        return cls(RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype), attn,
                   RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype), mlp)

    def attention_io(self, x):
        """(next hidden state, this layer's attention input, its attention output): what layer-wise
        distillation taps."""
        h = self.input_layernorm(x)
        a = self.self_attn(h)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), h, a

    def construct(self, x, cache=None, pos=None):
        if cache is None:
            return self.attention_io(x)[0]
        x = x + self.self_attn(self.input_layernorm(x), cache, pos)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderModel(nn.Cell):
    def __init__(self, embed_tokens, layers, norm):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.layers = nn.CellList(layers)
        self.norm = norm

    @classmethod
    def build(cls, cfg: ModelConfig, dtype):
        return cls(Embedding(cfg.vocab_size, cfg.hidden_size, dtype),
                   [DecoderLayer.build(cfg, i, dtype) for i in range(cfg.num_hidden_layers)],
                   RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype))

    def construct(self, input_ids, caches=None, pos=None):
        x = self.embed_tokens(input_ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, None if caches is None else caches[i], pos)
        return self.norm(x)

    def layer_states(self, x, layers):
        """Hidden states x through the layers of index ``layers`` (in order): (output, each layer's output). Model-
        level distillation runs all of them, a pipeline stage its own."""
        states = ()
        for i in layers:
            x = self.layers[i](x)
            states = states + (x,)
        return x, states

    def attention_io(self, input_ids):
        """Per layer, the attention's input and output on a forward pass: two tuples of [B, T, hidden]."""
        x = self.embed_tokens(input_ids)
        inputs, outputs = (), ()
        for layer in self.layers:
            x, h, a = layer.attention_io(x)
            inputs, outputs = inputs + (h,), outputs + (a,)
        return inputs, outputs


class CausalLM(nn.Cell):
    """``model(input_ids [B, T] int) -> logits [B, T, vocab]`` (float32).

    Incremental use: ``model(ids, caches, pos) -> logits`` writes the tokens into ``caches`` (from
    ``init_caches``, updated in place) at ``pos`` (int32 tensor [1]: the number of tokens already in them);
    ``next_logits`` is the same step returning one position's logits (what generation needs)."""

    def __init__(self, cfg: ModelConfig, dtype=ms.float32, model: DecoderModel = None, lm_head=None):
        """A new model from cfg, or one assembled from an existing ``model`` body and ``lm_head``."""
        super().__init__()
        self.config = cfg
        self.dtype = dtype
        self.model = model if model is not None else DecoderModel.build(cfg, dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = lm_head if lm_head is not None else linear(cfg.hidden_size, cfg.vocab_size, False, dtype)

    def init_caches(self, batch: int, capacity: int, full: bool = False) -> tuple:
        """One cache per layer, each made by that layer's attention (so a converted layer brings its own).
        ``full=True`` asks every layer for a cache that keeps all ``capacity`` positions (chunked prefill over a
        long context), even layers whose own cache is bounded (sliding windows)."""
        return tuple(layer.self_attn.init_cache(batch, capacity, full) for layer in self.model.layers)

    def shrink_caches(self, caches, length: int) -> tuple:
        """Caches to decode from, made from full ones (``init_caches(..., full=True)``) holding ``length``
        prefilled positions: each layer's own (a sliding window's ring holds only what it will still read)."""
        return tuple(layer.self_attn.shrink_cache(c, length) for layer, c in zip(self.model.layers, caches))

    def freeze(self):
        """Marks the model as taking no gradient (a teacher, and the cells a student shares with it): every
        Parameter's requires_grad off, and its norms expand their weights (mindedit.layers.RMSNorm)."""
        for p in self.get_parameters():
            p.requires_grad = False
        for _, cell in self.cells_and_names():
            if isinstance(cell, RMSNorm):
                cell.frozen = True

    def head_weight(self):
        """The output head's [vocab, hidden] matrix (the embedding table when tied)."""
        return self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight

    def logits(self, hidden):
        if self.config.tie_word_embeddings:
            return mint.matmul(hidden, self.model.embed_tokens.weight.T).astype(ms.float32)
        return self.lm_head(hidden).astype(ms.float32)

    def construct(self, input_ids, caches=None, pos=None):
        return self.logits(self.model(input_ids, caches, pos))

    def next_logits(self, input_ids, caches, pos, last):
        """A cached step's logits at chunk index ``last`` (int32 tensor [1]) only: [B, vocab]. The head runs on
        one position, not the whole chunk (a 512-token chunk's [512, 49152] logits are 100 MB)."""
        hidden = ops.gather(self.model(input_ids, caches, pos), last, 1)[:, 0]
        if self.config.tie_word_embeddings:
            # no transposed copy of the [vocab, hidden] table per token (100 ms of a 280 ms SmolLM2 decode step).
            # Training keeps logits(): against this kernel a resumed run's losses differed in the 7th digit
            return mint.nn.functional.linear(hidden, self.model.embed_tokens.weight).astype(ms.float32)
        return self.logits(hidden)
