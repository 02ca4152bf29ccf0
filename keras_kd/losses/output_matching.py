"""Output matching for regression students (mean squared error to the teacher's outputs)."""

from __future__ import annotations

import keras

from keras_kd.losses.base import DistillationLoss
from keras_kd.losses.functional import output_mse


@keras.saving.register_keras_serializable(package="keras_kd")
class OutputMatchingDistillation(DistillationLoss):
    """Regresses the student's outputs onto the teacher's: the loss for regression students.

    Choose it explicitly for regression models (real-valued outputs of any shape): nothing is
    softened and no softmax is involved. It differs from `LogitMatchingDistillation`, which
    compares classifier *logits* with `0.5 * sum_k (s_k - t_k)^2` (a sum over classes, half
    squared L2, Ba & Caruana): here the squared error is *averaged* over all non-batch entries,
    so its scale does not grow with the output size and equals Keras's `MeanSquaredError` of the
    student against the teacher's predictions.

    Args:
        name: log key of this loss (default `output_matching_distillation`).

    Returns (when called):
        `(batch,)` values `mean_k (s_k - t_k)^2` over all non-batch entries `k` (also for
        sequence outputs: one value per example).

    Example:
        >>> distiller = keras_kd.Distiller(
        ...     teacher_regressor, student_regressor,
        ...     distillation_losses=OutputMatchingDistillation())
        >>> distiller.compile("adam", loss=keras.losses.MeanSquaredError())

    Reference:
        Chen et al., "Learning Efficient Object Detection Models with Knowledge
        Distillation", NeurIPS 2017; Takamoto et al., "An Efficient Method of Training Small
        Models for Regression Problems with Knowledge Distillation", MIPR 2020.
        `mean_k (s_k - t_k)^2`.
    """

    def call(self, teacher_features, student_features):
        return output_mse(teacher_features[0], student_features[0])
