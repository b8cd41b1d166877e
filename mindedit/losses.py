"""The two measures training and evaluation share, one definition each (MindSpore ops: they run inside the
training graphs and eagerly on tensors alike):

    layer_error    how far a student attention's output s is from the teacher's y: ||s - y||^2 / ||y||^2 per
                   sequence, averaged over the batch (stage 1's loss, GateSWA's window errors, bench/init_quality)
    token_kl       KL between the teacher's and the student's next-token distributions per position (forward,
                   reverse, or their average), from log-probabilities (stage 2's loss, the evaluation's KL)
"""
import mindspore as ms
from mindspore import mint

KL_KINDS = ("forward", "reverse", "both")


def layer_error(s, y):
    """s, y [B, T, hidden] -> scalar (float32)."""
    s, y = s.astype(ms.float32), y.astype(ms.float32)
    err = s - y
    return ((err * err).sum((1, 2)) / ((y * y).sum((1, 2)) + 1e-12)).mean()


def vocab_sum(x):
    return x.sum(-1)


def token_kl(logp_t, logp_s, kind: str = "forward", total=vocab_sum):
    """[..., V] log-probabilities -> [...] KL per position. ``total`` sums over the vocabulary axis (a
    tensor-parallel run passes the sum over its vocabulary slices: mindedit.parallel.tensor.Vocab.sum)."""
    if kind == "forward":
        return total(mint.exp(logp_t) * (logp_t - logp_s))
    if kind == "reverse":
        return total(mint.exp(logp_s) * (logp_s - logp_t))
    return 0.5 * total((mint.exp(logp_t) - mint.exp(logp_s)) * (logp_t - logp_s))
