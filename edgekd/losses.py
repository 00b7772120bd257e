"""Distillation losses. Each docstring gives the formula, the shapes and the paper."""

from __future__ import annotations


def kd_loss(student_logits, teacher_logits, labels, *, temperature: float, alpha: float):
    """Knowledge distillation (Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network").

        L = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

    student_logits s, teacher_logits t: (B, K); labels y: (B,) int64. KL is averaged over the batch.
    The T^2 factor keeps the soft-target gradients' magnitude independent of T (Hinton et al., sec. 2).
    """
    import torch.nn.functional as F

    T = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / T, dim=1),
        F.log_softmax(teacher_logits / T, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits, labels) if alpha < 1 else student_logits.new_zeros(())
    return alpha * T * T * soft + (1 - alpha) * hard
