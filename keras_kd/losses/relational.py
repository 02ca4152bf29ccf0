"""Relational knowledge distillation: distance and angle terms (Park et al. 2019)."""

from __future__ import annotations

import keras

from keras_kd import validation
from keras_kd.losses.base import LOGITS, DistillationLoss, Tap
from keras_kd.losses.functional import rkd_angle, rkd_distance


@keras.saving.register_keras_serializable(package="keras_kd")
class RelationalDistillation(DistillationLoss):
    """Transfers the structure of a batch: pairwise distances and triplet angles.

    The student's embeddings may have any width (only relations are compared, so no adapter
    is needed). The loss couples the examples of a batch: each example's value is its
    contribution as anchor (distance) / vertex (angle), so the batch mean equals the paper's
    loss; a sample weight scales that contribution.

    Args:
        teacher_layer: teacher layer giving the embedding (`None` = logits).
        student_layer: student layer giving the embedding (`None` = logits).
        distance_weight: `lambda_D` (25 in the paper).
        angle_weight: `lambda_A` (50 in the paper).

    Returns (when called):
        `(batch,)` values `lambda_D * L_D_i + lambda_A * L_A_i` (Huber losses, see
        `keras_kd.losses.functional.rkd_distance` / `rkd_angle`).

    Example:
        >>> rkd = RelationalDistillation("teacher_embedding", "student_embedding")

    Reference:
        Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019.
        `L_RKD = lambda_D * sum huber(psi_D(t_i,t_j) - psi_D(s_i,s_j))
        + lambda_A * sum huber(psi_A(t_i,t_j,t_k) - psi_A(s_i,s_j,s_k))`.
    """

    def __init__(
        self,
        teacher_layer: str | None = None,
        student_layer: str | None = None,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        for arg, value in (("teacher_layer", teacher_layer), ("student_layer", student_layer)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{arg} must be a layer name or None, got {value!r}.")
        self.teacher_layer = teacher_layer
        self.student_layer = student_layer
        self.distance_weight = validation.non_negative("distance_weight", distance_weight)
        self.angle_weight = validation.non_negative("angle_weight", angle_weight)
        if self.distance_weight == 0 and self.angle_weight == 0:
            raise ValueError("distance_weight and angle_weight cannot both be 0.")

    def teacher_taps(self) -> tuple[Tap, ...]:
        return (Tap(self.teacher_layer) if self.teacher_layer else LOGITS,)

    def student_taps(self) -> tuple[Tap, ...]:
        return (Tap(self.student_layer) if self.student_layer else LOGITS,)

    def call(self, teacher_features, student_features):
        t, s = teacher_features[0], student_features[0]
        total = 0.0
        if self.distance_weight:
            total = total + self.distance_weight * rkd_distance(t, s)
        if self.angle_weight:
            total = total + self.angle_weight * rkd_angle(t, s)
        return total

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "teacher_layer": self.teacher_layer,
                "student_layer": self.student_layer,
                "distance_weight": self.distance_weight,
                "angle_weight": self.angle_weight,
            }
        )
        return config
