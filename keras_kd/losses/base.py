"""Base class shared by every distillation loss, and the `Tap` that names a feature."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import keras


@dataclasses.dataclass(frozen=True)
class Tap:
    """Names one tensor a loss needs from a model.

    Args:
        layer: name of a layer in the model, or `None` for the model's logits (pre-softmax
            output; a final `Softmax`/`Activation("softmax")` layer or a `Dense(softmax)` is
            undone exactly, see `keras_kd.features`).
        pre_activation: take the layer's *input* instead of its output. Use it on an
            activation layer (`ReLU`, `Activation("relu")`) to get the pre-ReLU feature that
            Overhaul distillation asks for.
    """

    layer: str | None = None
    pre_activation: bool = False

    def describe(self) -> str:
        if self.layer is None:
            return "logits"
        return f"{self.layer}{' (pre-activation)' if self.pre_activation else ''}"


LOGITS = Tap()


class DistillationLoss(keras.layers.Layer):
    """A comparison between teacher and student signals, returning one value per example.

    Subclasses declare what they need with `teacher_features()` / `student_features()` (tuples
    of `Tap`; the default is the logits of each model) and implement
    `call(teacher_features, student_features)`, receiving tuples of tensors in the same order
    and returning a `(batch,)` float32 tensor. Trainable adapters (regressors) are sublayers
    created in `build(teacher_shapes, student_shapes)`; they train with the student and are
    never part of the student model.

    The `Distiller` reduces the per-example values with the sample weights; losses never reduce
    over the batch themselves.
    """

    def __init__(self, name: str | None = None, **kwargs):
        kwargs.pop("dtype", None)
        super().__init__(name=name, dtype="float32", **kwargs)
        self._given_name = name

    @property
    def log_name(self) -> str:
        """Key of this loss in training logs: the given `name`, else the snake-case class name.

        Keras makes automatic layer names unique per session (`..._1`, `..._2`), which would
        make log keys depend on how many losses were built before.
        """
        if self._given_name:
            return self._given_name
        name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", type(self).__name__.lstrip("_"))
        return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("dtype", None)
        if not self._given_name:
            config.pop("name", None)  # keep automatic names automatic after reloading
        return config

    def teacher_features(self) -> tuple[Tap, ...]:
        """The teacher tensors `call` receives, in order."""
        return (LOGITS,)

    def student_features(self) -> tuple[Tap, ...]:
        """The student tensors `call` receives, in order."""
        return (LOGITS,)

    def temperature_variable(self) -> keras.Variable | None:
        """The non-trainable temperature variable a scheduler may assign, or `None`."""
        return None

    def build(self, teacher_shapes: Sequence[tuple], student_shapes: Sequence[tuple]) -> None:
        """Creates adapters from the static shapes of the requested features."""
        self.built = True

    def __call__(self, teacher_features, student_features, **kwargs):
        # Keras's automatic build maps call arguments to `<name>_shape` build arguments; build
        # here instead with the `(teacher_shapes, student_shapes)` signature every loss uses.
        if not self.built:
            self.build(
                tuple(tuple(f.shape) for f in teacher_features),
                tuple(tuple(f.shape) for f in student_features),
            )
        return super().__call__(teacher_features, student_features, **kwargs)

    def call(self, teacher_features, student_features):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement call().")


def make_temperature(layer: keras.layers.Layer, temperature: float) -> keras.Variable:
    """Validates `temperature` and stores it in a non-trainable variable of `layer`."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a positive number, got {temperature!r}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    return layer.add_weight(
        shape=(),
        initializer=keras.initializers.Constant(float(temperature)),
        trainable=False,
        dtype="float32",
        name="temperature",
    )
