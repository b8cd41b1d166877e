"""Stage 2: model-level distillation. The student runs end to end on its own activations; the teacher (the same
frozen backbone, one copy in memory) runs on the same batch and supplies the target next-token distribution.

    loss = KL at temperature tau  (forward KL(t||s), reverse KL(s||t) or both averaged; scaled by tau^2)
         + feature_weight * mean cosine distance between student and teacher hidden states at chosen layers
         + ce_weight * next-token cross-entropy of the student on the data
Terms with zero weight are not built into the graph. The aux output is [kl, feature, ce].
The KL and CE come from ``HeadTerms``: the heads, the log-softmaxes and their gradient, a few hundred positions at a
time, so that no [T, vocab] tensor exists whole (at 1,024 tokens SmolLM2's logits are 200 MB each, and a compiled
CPU graph kept ~14 of them). Every reduction over the vocabulary goes through ``vocab``
(mindedit.parallel.tensor.Vocab), so the same loss runs on logits split over tensor-parallel ranks without
gathering them.
"""
import mindspore as ms
from mindspore import mint, nn, ops

from mindedit.layers import expand
from mindedit.losses import KL_KINDS, token_kl
from mindedit.parallel.tensor import Vocab

ROWS = 256  # positions per chunk of HeadTerms: [256, vocab] float32 is 50 MB for SmolLM2, 156 MB for Qwen3


class HeadTerms(nn.Cell):
    """(teacher hidden, student hidden [B, T, D] after the final norms, teacher head, student head [V, D] (this
    rank's vocabulary rows), ids [B, T]) -> (terms, grads): ``terms`` = [KL at temperature tau (scaled by tau^2, mean
    over positions), next-token CE of the student (mean over B x (T - 1) positions)]; ``grads`` are the backward's
    values, for ``bprop`` only (callers use ``terms``).

    It runs ``rows`` positions at a time and computes each chunk's gradient while its logits exist (as fused linear
    cross-entropy kernels do): the backward only scales what the forward left, so no [T, vocab] tensor exists whole
    and none is recomputed. In closed form, with z = logits / tau, p = softmax(z), l = log p, g the KL per row:
        forward KL(t||s) = sum p_t (l_t - l_s):   d/dz_s = p_s - p_t
        reverse KL(s||t) = sum p_s (l_s - l_t):   d/dz_s = p_s * (l_s - l_t - g)
        both (their mean):                        the mean of the two
        CE = -l_s(tau=1)[next id]:                d/dlogits_s = p_s(tau=1) - onehot(next id)
    The KL's and the CE's gradients are kept apart (each is scaled by its own incoming gradient). The teacher side
    gets no gradient; the student's head gets one only when it is trained (``head_grad``)."""

    def __init__(self, vocab: Vocab, kind: str = "forward", temperature: float = 1.0, ce: bool = False,
                 head_grad: bool = True, rows: int = ROWS):
        super().__init__()
        if kind not in KL_KINDS:
            raise ValueError(f"kl={kind!r}: expected one of {KL_KINDS}")
        self.vocab, self.kind, self.tau, self.ce, self.rows = vocab, kind, float(temperature), ce, rows
        self.head_grad = head_grad  # False: the student's head is frozen, its [V, D] gradient is not computed
        self.logits_of = ops.MatMul(transpose_b=True)   # h [R, D] x w [V, D]^T
        self.back_to_h = ops.MatMul()                    # dz [R, V] x w [V, D]
        self.back_to_w = ops.MatMul(transpose_a=True)    # dz [R, V]^T x h [R, D]

    def log_probs(self, h, w, tau: float):
        return self.vocab.log_softmax(self.logits_of(h, w).astype(ms.float32) * (1.0 / tau))

    def next_ids(self, ids):
        """(next id of each position [N], 1 where there is one [N]): the CE's targets, flattened like the rows."""
        b, t = ids.shape
        nxt = mint.cat((ids[:, 1:], ids[:, :1]), 1).reshape(-1)
        has = mint.cat((mint.ones((b, t - 1), dtype=ms.float32), mint.zeros((b, 1), dtype=ms.float32)), 1)
        return nxt, has.reshape(-1)

    def construct(self, h_t, h_s, w_t, w_s, ids):
        b, t, d = h_s.shape
        n = b * t
        h_t, h_s = h_t.reshape(n, d), h_s.reshape(n, d)
        nxt, has = self.next_ids(ids)
        kl, ce = mint.zeros((), dtype=ms.float32), mint.zeros((), dtype=ms.float32)
        # per chunk: dh rows kept, dw summed as it comes (one [V, D] each, not one per chunk); a 0-d zero without
        # a head gradient
        kl_dh, ce_dh = (), ()
        kl_dw = ce_dw = mint.zeros(w_s.shape if self.head_grad else (), dtype=ms.float32)
        for a in range(0, n, self.rows):
            e = a + self.rows  # (slices stop at n)
            l_s = self.log_probs(h_s[a:e], w_s, self.tau)
            l_t = self.log_probs(h_t[a:e], w_t, self.tau)
            kl = kl + token_kl(l_t, l_s, self.kind, self.vocab.sum).sum()
            dh, dw = self.chunk_grads(self.kl_grad(l_t, l_s), h_s[a:e], w_s)
            kl_dh, kl_dw = kl_dh + (dh,), kl_dw + dw
            if self.ce:
                l_1 = l_s if self.tau == 1.0 else self.log_probs(h_s[a:e], w_s, 1.0)
                ce = ce - (self.vocab.pick(l_1, nxt[a:e]) * has[a:e]).sum()
                dh, dw = self.chunk_grads(self.ce_grad(l_1, nxt[a:e], has[a:e]), h_s[a:e], w_s)
                ce_dh, ce_dw = ce_dh + (dh,), ce_dw + dw
        ce_rows = b * (t - 1) if t > 1 else 1
        terms = ops.stack((kl * (self.tau * self.tau / n), ce / ce_rows))
        # d terms[0] / dz_s per logit is tau / n, d terms[1] / dlogits_s is 1 / ce_rows
        return terms, (self.gathered(kl_dh, kl_dw, self.tau / n), self.gathered(ce_dh, ce_dw, 1.0 / ce_rows))

    def bprop(self, h_t, h_s, w_t, w_s, ids, out, dout):
        (dh_kl, dw_kl), (dh_ce, dw_ce) = out[1]
        dh, dw = dh_kl * dout[0][0], dw_kl * dout[0][0]
        if self.ce:
            dh, dw = dh + dh_ce * dout[0][1], dw + dw_ce * dout[0][1]
        dw = dw.astype(w_s.dtype) if self.head_grad else mint.zeros_like(w_s)
        return mint.zeros_like(h_t), dh.reshape(h_s.shape).astype(h_s.dtype), mint.zeros_like(w_t), dw, \
            mint.zeros_like(ids)

    def chunk_grads(self, dz, h, w):
        """d / d logits [R, V] of one chunk -> (d / d its hidden rows [R, D], d / d the head [V, D] or a 0-d zero)."""
        dz = dz.astype(w.dtype)
        return self.back_to_h(dz, w), self.head_grad_of(dz, h)

    def gathered(self, dh, dw, scale: float):
        """(per-chunk dh, summed dw) -> (dh of all rows [N, D], dw), both times scale (a 0-d zero dh if none)."""
        if not dh:
            return mint.zeros((), dtype=ms.float32), dw
        return mint.cat(dh, 0).astype(ms.float32) * scale, dw * scale

    def head_grad_of(self, dz, h):
        if self.head_grad:
            return self.back_to_w(dz, h).astype(ms.float32)
        return mint.zeros((), dtype=ms.float32)

    def kl_grad(self, l_t, l_s):
        """d KL / d z_s per row (see the class docstring)."""
        p_s = mint.exp(l_s)
        if self.kind == "forward":
            return p_s - mint.exp(l_t)
        r = l_s - l_t
        reverse = p_s * (r - expand(self.vocab.sum(p_s * r).reshape(-1, 1), r))
        if self.kind == "reverse":
            return reverse
        return 0.5 * (p_s - mint.exp(l_t) + reverse)

    def ce_grad(self, l_1, nxt, has):
        """d CE (summed over rows that have a next id) / d logits_s per row."""
        hot = self.vocab.one_hot(nxt, l_1.shape[-1])
        return (mint.exp(l_1) - hot) * expand(has.reshape(-1, 1), l_1)


def head_trainable(student, teacher) -> bool:
    """Whether the student's head is its own (trained) rather than the frozen teacher's."""
    try:
        return student.head_weight() is not teacher.head_weight()
    except AttributeError:  # a middle pipeline stage holds no head
        return False


class Stage2Loss(nn.Cell):
    def __init__(self, teacher, student, kl: str = "forward", temperature: float = 1.0, feature_layers=(),
                 feature_weight: float = 0.0, ce_weight: float = 0.0, vocab: Vocab = None):
        super().__init__(auto_prefix=False)
        self.teacher, self.student = teacher, student
        self.head = HeadTerms(vocab if vocab is not None else Vocab(), kl, temperature, ce_weight > 0,
                              head_trainable(student, teacher))
        self.layers = tuple(range(teacher.config.num_hidden_layers))
        self.feature_layers = tuple(int(i) for i in feature_layers) if feature_weight > 0 else ()
        self.feature_weight, self.ce_weight = float(feature_weight), float(ce_weight)

    def total(self, kl, feature, ce):
        """The weighted objective from its terms (also the pipeline's, whose stages each hold some of the terms)."""
        return kl + self.feature_weight * feature + self.ce_weight * ce

    def feature_term(self, hs, ht):
        """One chosen layer's share of the feature term: mean cosine distance / number of chosen layers."""
        ht = ops.stop_gradient(ht).astype(ms.float32)
        hs = hs.astype(ms.float32)
        cos = (hs * ht).sum(-1) / (ops.sqrt((hs * hs).sum(-1) * (ht * ht).sum(-1)) + 1e-6)
        return (1.0 - cos).mean() / len(self.feature_layers)

    def stage_terms(self, ids, t_x, s_x, layers, first: bool, last: bool):
        """(kl, feature, ce, teacher out, student out) over the layers of index ``layers`` of teacher and student:
        all of them in one process, a pipeline stage's own otherwise (mindedit.parallel.pipeline). ``first``: start
        from the embedding of ids (t_x, s_x unused); ``last``: end through the heads (kl and ce are 0 elsewhere)."""
        zero = ops.zeros((), ms.float32)
        if first:
            t_x, s_x = self.teacher.model.embed_tokens(ids), self.student.model.embed_tokens(ids)
        t_x, t_states = self.teacher.model.layer_states(t_x, layers)
        s_x, s_states = self.student.model.layer_states(s_x, layers)
        feature, kl, ce = zero, zero, zero
        for k, i in enumerate(layers):
            if i in self.feature_layers:
                feature = feature + self.feature_term(s_states[k], t_states[k])
        if last:
            terms, _ = self.head(self.teacher.model.norm(t_x), self.student.model.norm(s_x),
                                 self.teacher.head_weight(), self.student.head_weight(), ids)
            kl, ce = terms[0], terms[1]
        return kl, feature, ce, t_x, s_x

    def construct(self, ids):
        kl, feature, ce, _, _ = self.stage_terms(ids, None, None, self.layers, True, True)
        return self.total(kl, feature, ce), ops.stack((kl, feature, ce))
