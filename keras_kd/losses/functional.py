"""Pure tensor functions behind every distillation loss.

Each function takes ``(teacher_..., student_...)`` tensors, computes in float32 and returns one
value per example (shape ``(batch,)``). The Keras classes in this package store configuration and
call these functions; reduction over the batch (with sample weights) is done by the `Distiller`.
"""

from __future__ import annotations

from keras import ops


def _f32(x):
    return ops.cast(x, "float32")


def soft_target_kl(teacher_logits, student_logits, temperature=4.0):
    """Temperature-scaled KL divergence between softened teacher and student distributions.

    Args:
        teacher_logits: `(batch, classes)` pre-softmax teacher outputs.
        student_logits: `(batch, classes)` pre-softmax student outputs.
        temperature: softening temperature `T > 0` (float or scalar tensor/variable).

    Returns:
        `(batch,)` float32 tensor: `T^2 * KL(softmax(t/T) || softmax(s/T))` per example.

    Example:
        >>> soft_target_kl([[2.0, 0.0]], [[2.0, 0.0]], 4.0)  # identical logits -> 0

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
        `T^2 * sum_k p_k (log p_k - log q_k)`, `p = softmax(t/T)`, `q = softmax(s/T)`; the `T^2`
        factor keeps gradient magnitudes independent of `T`.
    """
    t = ops.cast(temperature, "float32")
    log_p = ops.log_softmax(_f32(teacher_logits) / t, axis=-1)
    log_q = ops.log_softmax(_f32(student_logits) / t, axis=-1)
    kl = ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)
    return t * t * kl


def soft_target_cross_entropy(teacher_logits, student_logits, temperature=4.0):
    """Cross-entropy of the student's softened distribution against the teacher's.

    Args:
        teacher_logits: `(batch, classes)` teacher logits.
        student_logits: `(batch, classes)` student logits.
        temperature: softening temperature `T > 0`.

    Returns:
        `(batch,)` float32: `-T^2 * sum_k softmax(t/T)_k * log softmax(s/T)_k`. It differs from
        `soft_target_kl` by the teacher entropy (a constant for the student), so the gradients
        are identical.

    Reference:
        Hinton et al. 2015, eq. (1)-(2).
    """
    t = ops.cast(temperature, "float32")
    p = ops.softmax(_f32(teacher_logits) / t, axis=-1)
    log_q = ops.log_softmax(_f32(student_logits) / t, axis=-1)
    return -t * t * ops.sum(p * log_q, axis=-1)


def logit_mse(teacher_logits, student_logits):
    """Half squared L2 distance between logits (logit matching).

    Args:
        teacher_logits: `(batch, classes)` teacher logits.
        student_logits: `(batch, classes)` student logits.

    Returns:
        `(batch,)` float32: `0.5 * sum_k (s_k - t_k)^2`.

    Reference:
        Ba & Caruana, "Do Deep Nets Really Need to be Deep?", NeurIPS 2014 (`1/(2T) sum ||g - z||^2`
        averaged over the batch); Zhou et al., "Rocket Launching", AAAI 2018 (hint loss on logits).
    """
    diff = _f32(student_logits) - _f32(teacher_logits)
    return 0.5 * ops.sum(ops.square(diff), axis=-1)


def per_example_mean(values):
    """Mean over every axis but the first: `(batch, ...) -> (batch,)` in float32."""
    values = _f32(values)
    if len(values.shape) <= 1:
        return values
    return ops.mean(ops.reshape(values, (ops.shape(values)[0], -1)), axis=-1)


__all__ = [
    "logit_mse",
    "per_example_mean",
    "soft_target_cross_entropy",
    "soft_target_kl",
]
