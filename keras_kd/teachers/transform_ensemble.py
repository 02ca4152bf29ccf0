"""`TransformEnsemble`: a teacher's predictions averaged over input transforms (data distillation).

Radosavovic et al.'s data distillation ensembles one model over several transforms of the same
input (multi-transform inference). For classification the transforms must not move the label:
flips, small shifts and scales do not; geometric transforms that would move a label (as boxes
or keypoints would) are out of scope. The transforms here are deterministic Keras layers
(`Flip`, `Shift`, `Scale`, and `keras.layers.Identity` for the input as it is), chosen by the
user; any callable mapping a batch to a batch of the same shape works too.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from keras_kd import validation
from keras_kd.features import FeatureExtractor
from keras_kd.losses.base import LOGITS
from keras_kd.teachers.ensemble import combine_teacher_logits

COMBINE_MODES = ("probabilities", "logits")


def _pixels(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer number of pixels, got {value!r}.")
    return int(value)


@keras.saving.register_keras_serializable(package="keras_kd")
class Flip(keras.layers.Layer):
    """Mirrors images `(batch, H, W, C)`: `"horizontal"` (left-right) or `"vertical"`.

    Example:
        >>> Flip("horizontal")(images)
    """

    def __init__(self, mode: str = "horizontal", **kwargs):
        super().__init__(**kwargs)
        self.mode = validation.one_of("mode", mode, ("horizontal", "vertical"))

    def call(self, inputs):
        return ops.flip(inputs, axis=2 if self.mode == "horizontal" else 1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="keras_kd")
class Shift(keras.layers.Layer):
    """Translates images `(batch, H, W, C)` by whole pixels, filling with `fill_value`.

    Args:
        dy: rows down (negative: up).
        dx: columns right (negative: left).
        fill_value: value of the uncovered pixels (0 for MNIST-like backgrounds).

    Example:
        >>> Shift(dy=0, dx=2)(images)   # two pixels to the right
    """

    def __init__(self, dy: int = 0, dx: int = 0, fill_value: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.dy = _pixels("dy", dy)
        self.dx = _pixels("dx", dx)
        self.fill_value = validation.real_scalar("fill_value", fill_value)

    def call(self, inputs):
        h, w = inputs.shape[1], inputs.shape[2]
        dy, dx = self.dy, self.dx
        if abs(dy) >= h or abs(dx) >= w:
            raise ValueError(f"Shift({dy}, {dx}) moves the image out of its {h}x{w} frame.")
        padded = ops.pad(inputs, ((0, 0), (max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0)),
                                  (0, 0)), constant_values=self.fill_value)
        top, left = max(-dy, 0), max(-dx, 0)
        return padded[:, top:top + h, left:left + w, :]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "dy": self.dy, "dx": self.dx,
                "fill_value": self.fill_value}


@keras.saving.register_keras_serializable(package="keras_kd")
class Scale(keras.layers.Layer):
    """Zooms images `(batch, H, W, C)` about their centre, keeping the size.

    A `factor > 1` enlarges (bilinear resize to `round(factor * H)`, centre crop); `< 1`
    shrinks (resize, then centre pad with `fill_value`).

    Example:
        >>> Scale(1.1)(images)
    """

    def __init__(self, factor: float = 1.0, fill_value: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = validation.positive("factor", factor, hint="E.g. 0.9 or 1.1.")
        self.fill_value = validation.real_scalar("fill_value", fill_value)

    def call(self, inputs):
        h, w = inputs.shape[1], inputs.shape[2]
        nh, nw = max(1, round(self.factor * h)), max(1, round(self.factor * w))
        resized = ops.image.resize(inputs, (nh, nw), interpolation="bilinear",
                                   antialias=self.factor < 1)
        if nh >= h:
            top, left = (nh - h) // 2, (nw - w) // 2
            return resized[:, top:top + h, left:left + w, :]
        top, left = (h - nh) // 2, (w - nw) // 2
        return ops.pad(resized, ((0, 0), (top, h - nh - top), (left, w - nw - left), (0, 0)),
                       constant_values=self.fill_value)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "factor": self.factor, "fill_value": self.fill_value}


def transform_averaged_probabilities(logits_per_transform, temperature=1.0):
    """The mean over transforms of the softened predictions.

    Args:
        logits_per_transform: `(transforms, batch, classes)` the teacher's logits on each
            transform of the batch.
        temperature: `T > 0`.

    Returns:
        `(batch, classes)` float32 `mean_k softmax(z_k / T)`.

    Example:
        >>> p = transform_averaged_probabilities(ops.stack([t(x), t(flip(x))]))

    Reference:
        Radosavovic, Dollar, Girshick, Gkioxari & He, "Data Distillation: Towards
        Omni-Supervised Learning", CVPR 2018 (multi-transform inference).
        `p(x) = 1/K sum_k softmax(t(T_k(x)) / T)`.
    """
    z = ops.cast(logits_per_transform, "float32") / ops.cast(temperature, "float32")
    return ops.mean(ops.softmax(z, axis=-1), axis=0)


def _check_transforms(transforms) -> list:
    if not isinstance(transforms, (list, tuple)):
        raise TypeError(f"transforms must be a list of callables (e.g. [keras.layers.Identity(), "
                        f"Flip('horizontal')]), got {transforms!r}.")
    if not transforms:
        raise ValueError("transforms must name at least one transform, got an empty list. Pass "
                         "e.g. [keras.layers.Identity(), Flip('horizontal'), Shift(0, 2)].")
    for i, transform in enumerate(transforms):
        if not callable(transform):
            raise TypeError(f"transforms[{i}] must be callable (a Keras layer or a function "
                            f"mapping a batch to a batch), got {transform!r}.")
    return list(transforms)


@keras.saving.register_keras_serializable(package="keras_kd")
class TransformEnsemble(keras.Model):
    """A frozen teacher averaged over input transforms, presented as one teacher.

    `ensemble(x)` runs the teacher (`training=False`) on `transform(x)` for each transform and
    returns `T * log(mean_k softmax(z_k / T))` (`combine="probabilities"`, the default): a
    soft-target loss at the same temperature `T` sees exactly the averaged distribution, and
    the arg-max is the ensemble's prediction. `combine="logits"` averages the logits instead.
    Use it as a `Distiller` teacher, or cache it once with `keras_kd.cache_teacher_logits`
    (the transforms cost one teacher pass each).

    Args:
        teacher: the trained teacher (logits, or a final softmax that is undone).
        transforms: non-empty list of label-preserving transforms, each mapping a batch to a
            batch of the same shape: `keras.layers.Identity()`, `Flip`, `Shift`, `Scale`, or
            any callable (serialisable when it is a registered Keras object).
        combine: `"probabilities"` or `"logits"`.
        temperature: `T > 0` at which the probabilities are averaged (set it to the
            distillation loss temperature).
        name: model name.

    Raises:
        TypeError, ValueError: an empty transform list, a transform that is not callable or
            changes the input shape, a bad `combine` or temperature.

    Example:
        >>> teacher_dd = TransformEnsemble(teacher, [keras.layers.Identity(),
        ...                                          Flip("horizontal"), Shift(0, 2),
        ...                                          Shift(0, -2), Scale(1.1)])
        >>> probs = keras.ops.softmax(teacher_dd(x_unlabelled))

    Reference:
        Radosavovic et al., "Data Distillation: Towards Omni-Supervised Learning", CVPR 2018.
        `T * log(1/K sum_k softmax(t(T_k(x)) / T))`.
    """

    def __init__(self, teacher: keras.Model, transforms: Sequence, combine: str = "probabilities",
                 temperature: float = 1.0, name: str = "transform_ensemble", **kwargs):
        super().__init__(name=name, **kwargs)
        if not isinstance(teacher, keras.Model):
            raise TypeError(f"teacher must be a keras.Model, got {type(teacher)!r}.")
        self.transforms = _check_transforms(transforms)
        self.combine = validation.one_of("combine", combine, COMBINE_MODES)
        self.temperature = validation.positive(
            "temperature", temperature, hint="Pass the distillation loss temperature.")
        self.teacher = teacher
        teacher.trainable = False
        self._extractor = FeatureExtractor(teacher, (LOGITS,), "teacher")
        try:
            shape = tuple(teacher.inputs[0].shape[1:])
        except (AttributeError, ValueError, IndexError, TypeError):
            shape = None
        if shape is not None and all(d is not None for d in shape):
            probe = np.zeros((2, *shape), "float32")
            for i, transform in enumerate(self.transforms):
                out = transform(probe)
                if tuple(out.shape) != probe.shape:
                    raise ValueError(f"transforms[{i}] maps inputs of shape {probe.shape} to "
                                     f"{tuple(out.shape)}; a transform must keep the shape.")
        self.trainable = False

    def per_transform_logits(self, inputs):
        """`(transforms, batch, classes)` float32 logits of the teacher on each transform."""
        return ops.stack([ops.cast(self._extractor.logits(t(inputs)), "float32")
                          for t in self.transforms])

    def call(self, inputs, training=None):
        z = self.per_transform_logits(inputs)
        k = len(self.transforms)
        return combine_teacher_logits(z, [1.0 / k] * k, self.combine, self.temperature)

    def compute_output_shape(self, input_shape):
        return self.teacher.compute_output_shape(input_shape)

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "transforms": [keras.saving.serialize_keras_object(t) for t in self.transforms],
            "combine": self.combine,
            "temperature": self.temperature,
        }

    @classmethod
    def from_config(cls, config: dict) -> TransformEnsemble:
        config = dict(config)
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        config["transforms"] = [keras.saving.deserialize_keras_object(t)
                                for t in config["transforms"]]
        return cls(**config)
