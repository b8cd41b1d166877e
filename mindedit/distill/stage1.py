"""Stage 1: layer-wise, teacher-forced distillation of the new attention modules.

One teacher forward per batch taps every layer's attention input h_l (the normed hidden state) and output y_l.
Each student attention sees the teacher's h_l and is trained to reproduce y_l; the loss of layer l is the
normalised MSE ||s_l(h_l) - y_l||^2 / ||y_l||^2. The teacher's activations are constants, so no gradient crosses
layers and every layer trains at once from the one teacher pass.
"""
from mindspore import nn, ops

from mindedit.losses import layer_error


class Stage1Loss(nn.Cell):
    """(ids) -> (total loss, per-layer losses [L]); gradients reach only the student's attention modules."""

    def __init__(self, teacher, student):
        super().__init__(auto_prefix=False)  # keep the models' parameter names (no re-prefixing under this cell)
        self.teacher_body = teacher.model
        self.student_body = student.model

    def layer_loss(self, i: int, h, y):
        """Layer i's loss on the teacher's attention input h and output y [B, T, hidden]: the normalised MSE per
        sequence, then the batch mean (a data-parallel split of the batch averages to the same loss)."""
        h = ops.stop_gradient(h)
        return layer_error(self.student_body.layers[i].self_attn(h), ops.stop_gradient(y))

    def construct(self, ids):
        inputs, targets = self.teacher_body.attention_io(ids)
        losses = ()
        for i in range(len(inputs)):
            losses = losses + (self.layer_loss(i, inputs[i], targets[i]),)
        per_layer = ops.stack(losses)
        return per_layer.sum(), per_layer

