"""Logit matching by L2 regression (Ba & Caruana 2014; Rocket Launching)."""

from __future__ import annotations

import keras

from keras_kd.losses.base import DistillationLoss
from keras_kd.losses.functional import logit_mse


@keras.saving.register_keras_serializable(package="keras_kd")
class LogitMatchingDistillation(DistillationLoss):
    """Regresses the student's logits onto the teacher's.

    Returns (when called):
        `(batch,)` values `0.5 * sum_k (s_k - t_k)^2`.

    Example:
        >>> keras_kd.Distiller(teacher, student,
        ...                    distillation_losses=LogitMatchingDistillation())

    Reference:
        Ba & Caruana, "Do Deep Nets Really Need to be Deep?", NeurIPS 2014;
        Zhou et al., "Rocket Launching: A Universal and Efficient Framework for Training
        Well-performing Light Net", AAAI 2018. `0.5 * ||z_s - z_t||^2`.
    """

    def call(self, teacher_features, student_features):
        return logit_mse(teacher_features[0], student_features[0])
