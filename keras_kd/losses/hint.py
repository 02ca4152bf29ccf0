"""FitNets hints: regress a student feature onto a teacher feature (Romero et al. 2015)."""

from __future__ import annotations

import keras

from keras_kd.adapters import (
    AUTO,
    check_adapter,
    deserialize_adapter,
    make_adapter,
    serialize_adapter,
)
from keras_kd.losses.base import DistillationLoss, Tap
from keras_kd.losses.functional import hint_mse


def _check_layer_name(name, argument: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{argument} must be a layer name (non-empty str), got {name!r}.")
    return name


@keras.saving.register_keras_serializable(package="keras_kd")
class HintDistillation(DistillationLoss):
    """FitNets hint loss: MSE between the teacher hint and the adapted student guided layer.

    Args:
        teacher_layer: name of the teacher's hint layer.
        student_layer: name of the student's guided layer.
        adapter: the trainable map from the student feature to the teacher's shape (FitNets
            calls it a regressor): `"auto"` (1x1 conv for 4-D maps, plus BatchNormalization
            when `batch_norm=True`, resizing when spatial sizes differ; Dense for vectors;
            identity when the shapes already match), `None` (identity, shapes must match) or
            a `keras.layers.Layer` mapping the student shape to the teacher's.
            The adapter trains with the student and is not part of `distiller.student`.
        teacher_pre_activation: tap the input of the teacher layer (an activation layer).
        student_pre_activation: tap the input of the student layer (an activation layer).
        batch_norm: whether the automatic adapter ends with BatchNormalization. Off by
            default: FitNets' map is a plain convolution (Romero et al. 2015, sec. 2.2);
            the BN variant (as in Overhaul's adapter) costs a normalisation of the
            teacher-width map, forward and backward, every step.

    Returns (when called):
        `(batch,)` values `mean_k (r(v)_k - u_k)^2`.

    Example:
        >>> hint = HintDistillation("teacher_block2", "student_block2")
        >>> distiller = keras_kd.Distiller(teacher, student, [SoftTargetDistillation(), hint])
        >>> distiller.fit(ds, epochs=10,
        ...               callbacks=[keras_kd.callbacks.HintStage(hint, epochs=2)])

    Reference:
        Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.
        `L_HT = 1/2 ||u_h(x; W_hint) - r(v_g(x; W_guided); W_r)||^2`.
    """

    def __init__(
        self,
        teacher_layer: str,
        student_layer: str,
        adapter=AUTO,
        teacher_pre_activation: bool = False,
        student_pre_activation: bool = False,
        batch_norm: bool = False,
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.teacher_layer = _check_layer_name(teacher_layer, "teacher_layer")
        self.student_layer = _check_layer_name(student_layer, "student_layer")
        self.adapter_arg = check_adapter(adapter, "adapter")
        self.teacher_pre_activation = bool(teacher_pre_activation)
        self.student_pre_activation = bool(student_pre_activation)
        self.batch_norm = bool(batch_norm)
        self.adapter = None

    @property
    def regressor(self):
        """Old name of `adapter`, kept because Keras looks up the adapter's weights in `.keras`
        files saved before the rename under this attribute name."""
        return self.adapter

    def teacher_taps(self) -> tuple[Tap, ...]:
        return (Tap(self.teacher_layer, self.teacher_pre_activation),)

    def student_taps(self) -> tuple[Tap, ...]:
        return (Tap(self.student_layer, self.student_pre_activation),)

    def build(self, teacher_shapes, student_shapes) -> None:
        if self.built:  # already built from its config when loaded from a .keras file
            return
        self.adapter = make_adapter(
            self.adapter_arg,
            teacher_shapes[0],
            student_shapes[0],
            batch_norm=self.batch_norm,
            name=f"{self.name}_adapter",
            role="adapter",
        )
        self.built = True

    def call(self, teacher_features, student_features):
        student = student_features[0]
        if self.adapter is not None:
            student = self.adapter(student)
        return hint_mse(teacher_features[0], student)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "teacher_layer": self.teacher_layer,
                "student_layer": self.student_layer,
                "adapter": serialize_adapter(self.adapter_arg),
                "teacher_pre_activation": self.teacher_pre_activation,
                "student_pre_activation": self.student_pre_activation,
                "batch_norm": self.batch_norm,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        config.setdefault("adapter", config.pop("regressor", AUTO))  # older .keras files
        config["adapter"] = deserialize_adapter(config["adapter"])
        return cls(**config)
