"""Attention transfer (Zagoruyko & Komodakis 2017)."""

from __future__ import annotations

import keras

from keras_kd import validation
from keras_kd.adapters import resize_spatial
from keras_kd.losses.base import DistillationLoss, Tap
from keras_kd.losses.functional import attention_transfer


@keras.saving.register_keras_serializable(package="keras_kd")
class AttentionTransfer(DistillationLoss):
    """Matches the normalized spatial attention maps of a teacher and a student layer.

    Channel counts may differ (the map averages over channels). When the spatial sizes differ,
    the student map is resized to the teacher's (average pooling for integer factors, else
    bilinear) before its attention map is taken.

    Args:
        teacher_layer: name of a teacher layer with a `(batch, H, W, C)` output.
        student_layer: name of a student layer with a `(batch, H', W', C')` output.
        p: power of the activation-based attention map (2 in the paper).

    Returns (when called):
        `(batch,)` values `mean_j (Q_s_j/||Q_s|| - Q_t_j/||Q_t||)^2`, `Q = mean_c |A_c|^p`.
        The authors weight the sum over layers by `beta / 2 = 500`: pass that as the
        distillation weight to reproduce their scale.

    Example:
        >>> at = AttentionTransfer("teacher_block2", "student_block2")
        >>> keras_kd.Distiller(teacher, student, [SoftTargetDistillation(), at], [1.0, 500.0])

    Reference:
        Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving the Performance
        of Convolutional Neural Networks via Attention Transfer", ICLR 2017.
        `beta/2 * || Q_s/||Q_s||_2 - Q_t/||Q_t||_2 ||_p`, p = 2.
    """

    def __init__(
        self,
        teacher_layer: str,
        student_layer: str,
        p: float = 2.0,
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        for arg, value in (("teacher_layer", teacher_layer), ("student_layer", student_layer)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{arg} must be a layer name (non-empty str), got {value!r}.")
        p = validation.positive("p", p, hint="The paper uses p=2.")
        self.teacher_layer = teacher_layer
        self.student_layer = student_layer
        self.p = p
        self._size = None

    def teacher_taps(self) -> tuple[Tap, ...]:
        return (Tap(self.teacher_layer),)

    def student_taps(self) -> tuple[Tap, ...]:
        return (Tap(self.student_layer),)

    def build(self, teacher_shapes, student_shapes) -> None:
        if self.built:  # already built from its config when loaded from a .keras file
            return
        t_shape, s_shape = tuple(teacher_shapes[0]), tuple(student_shapes[0])
        if len(t_shape) != 4 or len(s_shape) != 4:
            raise ValueError(
                "AttentionTransfer needs 4-D (batch, H, W, C) features; teacher layer "
                f"'{self.teacher_layer}' gives {t_shape}, student layer '{self.student_layer}' "
                f"gives {s_shape}."
            )
        self._size = t_shape[1:3] if t_shape[1:3] != s_shape[1:3] else None
        self.built = True

    def call(self, teacher_features, student_features):
        student = student_features[0]
        if self._size is not None:
            student = resize_spatial(keras.ops.cast(student, "float32"), self._size)
        return attention_transfer(teacher_features[0], student, self.p)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {"teacher_layer": self.teacher_layer, "student_layer": self.student_layer,
             "p": self.p}
        )
        return config
