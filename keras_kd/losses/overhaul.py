"""Overhaul of feature distillation (Heo et al. 2019): margin-ReLU teacher, partial L2."""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np

from keras_kd.adapters import (
    AUTO,
    check_adapter,
    deserialize_adapter,
    make_adapter,
    serialize_adapter,
)
from keras_kd.losses.base import DistillationLoss, Tap
from keras_kd.losses.functional import overhaul_partial_l2


def batch_norm_margin(gamma: Sequence[float], beta: Sequence[float]) -> np.ndarray:
    """Per-channel margin `m = E[x | x < 0]` for `x ~ N(beta, gamma^2)` (the BN output).

    Args:
        gamma: BatchNormalization scale per channel (its absolute value is the std).
        beta: BatchNormalization offset per channel (the mean).

    Returns:
        `(C,)` float32 array: `beta - |gamma| * phi(beta/|gamma|) / Phi(-beta/|gamma|)`, or
        `-3 |gamma|` where `Phi(-beta/|gamma|) <= 0.001` (as in the authors' code).

    Reference:
        Heo et al., "A Comprehensive Overhaul of Feature Distillation", ICCV 2019, eq. (3).
    """
    gamma = np.abs(np.asarray(gamma, dtype=np.float64).reshape(-1))
    beta = np.asarray(beta, dtype=np.float64).reshape(-1)
    if gamma.shape != beta.shape:
        raise ValueError(
            f"gamma and beta must have one value per channel, got {gamma.shape} and {beta.shape}."
        )
    margin = np.empty_like(gamma)
    for c, (s, m) in enumerate(zip(gamma, beta)):
        s = max(s, 1e-12)
        cdf = 0.5 * math.erfc(m / s / math.sqrt(2.0))  # Phi(-m/s)
        if cdf > 0.001:
            pdf = math.exp(-((m / s) ** 2) / 2.0) / math.sqrt(2.0 * math.pi)
            margin[c] = m - s * pdf / cdf
        else:
            margin[c] = -3.0 * s
    return margin.astype(np.float32)


def find_batch_norm(model: keras.Model, relu_layer: str) -> keras.layers.BatchNormalization:
    """The `BatchNormalization` layer whose output feeds the activation layer `relu_layer`.

    Raises:
        ValueError: when `relu_layer` is not fed directly by a BatchNormalization layer.
    """
    layer = model.get_layer(relu_layer)
    producer = layer.input._keras_history.operation
    if not isinstance(producer, keras.layers.BatchNormalization):
        raise ValueError(
            f"Teacher layer '{relu_layer}' is fed by '{producer.name}' "
            f"({type(producer).__name__}), not by a BatchNormalization layer: pass "
            "teacher_batch_norm=<name of the BN layer whose statistics set the margin>."
        )
    return producer


@keras.saving.register_keras_serializable(package="keras_kd")
class OverhaulDistillation(DistillationLoss):
    """Feature distillation before the ReLU with a margin-ReLU teacher and a partial L2.

    The teacher feature is taken *before* its ReLU (`Tap(teacher_layer, pre_activation=True)`
    on the activation layer) and transformed by `max(t, m)`, with the per-channel margin `m`
    computed from the teacher BatchNormalization feeding that ReLU (`batch_norm_margin`). The
    student feature (pre-ReLU by default) goes through an adapter (1x1 conv + BN, the paper's
    connector; trained with the student, not exported). Positions where the student is below
    a non-positive target cost nothing: the ReLU would erase the difference anyway.

    Args:
        teacher_layer: name of the teacher's activation (ReLU) layer.
        student_layer: name of the student's activation layer (or any layer with
            `student_pre_activation=False`).
        teacher: the teacher model, to read the margin from its BN statistics. Needed unless
            `margin` is given.
        teacher_batch_norm: name of that BN layer; default: the layer feeding `teacher_layer`.
        margin: explicit per-channel margins (instead of `teacher`).
        adapter: `"auto"` (1x1 conv + BN, resizing if needed) or a `keras.layers.Layer`.
        student_pre_activation: tap the student layer's input (pre-ReLU), as in the paper.

    Returns (when called):
        `(batch,)` values `sum_k d_p(max(t, m)_k, r(s)_k)`. The paper scales the summed loss
        by `1/1000` (CIFAR) per batch element: pass a distillation weight of that order.

    Example:
        >>> ofd = OverhaulDistillation("t_relu2", "s_relu2", teacher=teacher)
        >>> keras_kd.Distiller(teacher, student, [SoftTargetDistillation(), ofd], [1.0, 1e-3])

    Reference:
        Heo, Kim, Yun, Park, Kwak & Choi, "A Comprehensive Overhaul of Feature Distillation",
        ICCV 2019. `L = sum d_p(sigma_m(F_t), r(F_s))`, `sigma_m(x) = max(x, m)`,
        `d_p(T, S) = sum_i 0 if S_i <= T_i <= 0 else (T_i - S_i)^2`.
    """

    def __init__(
        self,
        teacher_layer: str,
        student_layer: str,
        teacher: keras.Model | None = None,
        teacher_batch_norm: str | None = None,
        margin: Sequence[float] | None = None,
        adapter=AUTO,
        student_pre_activation: bool = True,
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        for arg, value in (("teacher_layer", teacher_layer), ("student_layer", student_layer)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{arg} must be a layer name (non-empty str), got {value!r}.")
        if adapter is None:
            raise ValueError("adapter must be 'auto' or a keras.layers.Layer, got None.")
        self.adapter_arg = check_adapter(adapter, "adapter")
        self.teacher_layer = teacher_layer
        self.student_layer = student_layer
        self.student_pre_activation = bool(student_pre_activation)
        if margin is None:
            if not isinstance(teacher, keras.Model):
                raise ValueError(
                    "OverhaulDistillation needs teacher=<the teacher keras.Model> (to read the "
                    f"margin from its BatchNormalization statistics) or margin=[...]; got "
                    f"teacher={teacher!r}."
                )
            bn = (
                teacher.get_layer(teacher_batch_norm)
                if teacher_batch_norm is not None
                else find_batch_norm(teacher, teacher_layer)
            )
            if not isinstance(bn, keras.layers.BatchNormalization) or not bn.built:
                raise ValueError(
                    f"teacher_batch_norm must name a built BatchNormalization layer, got "
                    f"'{bn.name}' ({type(bn).__name__})."
                )
            gamma = (keras.ops.convert_to_numpy(bn.gamma) if bn.scale
                     else np.ones(bn.moving_mean.shape))
            beta = (keras.ops.convert_to_numpy(bn.beta) if bn.center
                    else np.zeros(bn.moving_mean.shape))
            margin = batch_norm_margin(gamma, beta)
        margin = np.asarray(margin, dtype=np.float32).reshape(-1)
        if margin.size == 0 or not np.all(np.isfinite(margin)):
            raise ValueError(f"margin must be finite values, one per channel, got {margin}.")
        self.margin = self.add_weight(
            shape=margin.shape,
            initializer=keras.initializers.Constant(margin),
            trainable=False,
            dtype="float32",
            name="margin",
        )
        self.adapter = None

    @property
    def connector(self):
        """Old name of `adapter`, kept because Keras looks up the adapter's weights in `.keras`
        files saved before the rename under this attribute name."""
        return self.adapter

    def teacher_taps(self) -> tuple[Tap, ...]:
        return (Tap(self.teacher_layer, pre_activation=True),)

    def student_taps(self) -> tuple[Tap, ...]:
        return (Tap(self.student_layer, pre_activation=self.student_pre_activation),)

    def build(self, teacher_shapes, student_shapes) -> None:
        if self.built:  # already built from its config when loaded from a .keras file
            return
        t_shape = tuple(teacher_shapes[0])
        if t_shape[-1] != self.margin.shape[0]:
            raise ValueError(
                f"The margin has {self.margin.shape[0]} channels but teacher layer "
                f"'{self.teacher_layer}' gives {t_shape[-1]} (shape {t_shape})."
            )
        self.adapter = make_adapter(
            self.adapter_arg, t_shape, student_shapes[0], always=True,
            name=f"{self.name}_adapter", role="adapter",
        )
        self.built = True

    def call(self, teacher_features, student_features):
        return overhaul_partial_l2(
            teacher_features[0], self.adapter(student_features[0]), self.margin
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "teacher_layer": self.teacher_layer,
                "student_layer": self.student_layer,
                "margin": [float(m) for m in keras.ops.convert_to_numpy(self.margin)],
                "adapter": serialize_adapter(self.adapter_arg),
                "student_pre_activation": self.student_pre_activation,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        config.setdefault("adapter", config.pop("connector", AUTO))  # older .keras files
        config["adapter"] = deserialize_adapter(config["adapter"])
        return cls(**config)
