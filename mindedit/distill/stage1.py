"""Stage 1: layer-wise, teacher-forced distillation of the new attention modules.

One teacher forward per batch taps every layer's attention input h_l (the normed hidden state) and output y_l.
Each student attention sees the teacher's h_l and is trained to reproduce y_l; the loss of layer l is the
normalised MSE ||s_l(h_l) - y_l||^2 / ||y_l||^2. The teacher's activations are constants, so no gradient crosses
layers and every layer trains at once from the one teacher pass.
"""
import mindspore as ms
from mindspore import nn, ops


def student_attention_params(student) -> list:
    """The trainable set of stage 1: the student's attention parameters (rotary buffers excluded)."""
    return [p for name, p in student.parameters_and_names() if "self_attn" in name and p.requires_grad]


class Stage1Loss(nn.Cell):
    """(ids) -> (total loss, per-layer losses [L]); gradients reach only the student's attention modules."""

    def __init__(self, teacher, student):
        super().__init__(auto_prefix=False)  # keep the models' parameter names (no re-prefixing under this cell)
        self.teacher_body = teacher.model
        self.student_body = student.model

    def layer_loss(self, i: int, h, y):
        """Layer i's loss on the teacher's attention input h and output y [B, T, hidden]: the normalised MSE per
        sequence, then the batch mean (a data-parallel split of the batch averages to the same loss)."""
        h, y = ops.stop_gradient(h), ops.stop_gradient(y).astype(ms.float32)
        err = self.student_body.layers[i].self_attn(h).astype(ms.float32) - y
        return ((err * err).sum((1, 2)) / ((y * y).sum((1, 2)) + 1e-12)).mean()

    def construct(self, ids):
        inputs, targets = self.teacher_body.attention_io(ids)
        losses = ()
        for i in range(len(inputs)):
            losses = losses + (self.layer_loss(i, inputs[i], targets[i]),)
        per_layer = ops.stack(losses)
        return per_layer.sum(), per_layer


def make_stage1_step(teacher, student, optimizer):
    """A compiled train step: ids -> (loss, per-layer losses, grad norm)."""
    loss_net = Stage1Loss(teacher, student)
    params = optimizer.parameters
    grad_fn = ms.value_and_grad(loss_net, None, params, has_aux=True)

    @ms.jit
    def step(ids):
        (loss, per_layer), grads = grad_fn(ids)
        norm = ops.sqrt(sum((g * g).sum() for g in grads))
        optimizer(grads)
        return loss, per_layer, norm

    return step


def default_optimizer(student, lr: float = 1e-3, weight_decay: float = 0.0):
    return nn.AdamWeightDecay(student_attention_params(student), learning_rate=lr, weight_decay=weight_decay)
