"""Stage 2: model-level distillation. The student runs end to end on its own activations; the teacher (the same
frozen backbone, one copy in memory) runs on the same batch and supplies the target next-token distribution.

    loss = KL at temperature tau  (forward KL(t||s), reverse KL(s||t) or both averaged; scaled by tau^2)
         + feature_weight * mean cosine distance between student and teacher hidden states at chosen layers
         + ce_weight * next-token cross-entropy of the student on the data
Terms with zero weight are not built into the graph. The aux output is [kl, feature, ce].
Every reduction over the vocabulary goes through ``vocab`` (mindedit.parallel.tensor.Vocab), so the same loss runs
on logits split over tensor-parallel ranks without gathering them.
"""
import mindspore as ms
from mindspore import nn, ops

from mindedit.losses import KL_KINDS, token_kl
from mindedit.parallel.tensor import Vocab


class Stage2Loss(nn.Cell):
    def __init__(self, teacher, student, kl: str = "forward", temperature: float = 1.0, feature_layers=(),
                 feature_weight: float = 0.0, ce_weight: float = 0.0, vocab: Vocab = None):
        super().__init__(auto_prefix=False)
        self.vocab = vocab if vocab is not None else Vocab()
        if kl not in KL_KINDS:
            raise ValueError(f"kl={kl!r}: expected one of {KL_KINDS}")
        self.teacher, self.student = teacher, student
        self.layers = tuple(range(teacher.config.num_hidden_layers))
        self.kl, self.tau = kl, float(temperature)
        self.feature_layers = tuple(int(i) for i in feature_layers) if feature_weight > 0 else ()
        self.feature_weight, self.ce_weight = float(feature_weight), float(ce_weight)

    def output_terms(self, t_logits, s_logits, ids):
        """(KL at temperature tau, scaled by tau^2; next-token CE of the student) from the logits of one batch."""
        vocab = self.vocab
        t_logits = ops.stop_gradient(t_logits)
        logp_t = vocab.log_softmax(t_logits / self.tau)
        logp_s = vocab.log_softmax(s_logits / self.tau)
        kl = token_kl(logp_t, logp_s, self.kl, vocab.sum).mean()
        ce = ops.zeros((), ms.float32)
        if self.ce_weight > 0:
            ce = -vocab.pick(vocab.log_softmax(s_logits[:, :-1]), ids[:, 1:]).mean()
        return kl * (self.tau * self.tau), ce

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
            kl, ce = self.output_terms(self.teacher.logits(self.teacher.model.norm(t_x)),
                                       self.student.logits(self.student.model.norm(s_x)), ids)
        return kl, feature, ce, t_x, s_x

    def construct(self, ids):
        kl, feature, ce, _, _ = self.stage_terms(ids, None, None, self.layers, True, True)
        return self.total(kl, feature, ce), ops.stack((kl, feature, ce))
