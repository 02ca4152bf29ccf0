"""Base class shared by every distillation loss, and the `Tap` that names a feature."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import keras

from keras_kd import validation


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

    @property
    def key(self) -> str:
        """The string that keys this tensor in cached teacher outputs (`"logits"`, a layer name,
        or `"<layer>/pre_activation"`; Keras layer names cannot contain `/`)."""
        if self.layer is None:
            return "logits"
        return f"{self.layer}/pre_activation" if self.pre_activation else self.layer


LOGITS = Tap()


class DistillationLoss(keras.layers.Layer):
    """A comparison between teacher and student signals, returning one value per example.

    A *tap* (`Tap`) is a place a loss asks to read in a model: a layer's output (or input), or
    the logits. A *feature* is the tensor read at a tap, which the loss receives in `call`.

    Subclasses declare their taps with `teacher_taps()` / `student_taps()` (tuples of `Tap`;
    the default is the logits of each model) and implement
    `call(teacher_features, student_features)`, receiving tuples of features in the same order
    and returning a `(batch,)` float32 tensor. Trainable adapters (the layers mapping a student
    feature to the teacher's shape, `keras_kd.adapters`) are sublayers created in
    `build(teacher_shapes, student_shapes)`; they train with the student and are never part of
    the student model.

    The `Distiller` reduces the per-example values with the sample weights; losses never reduce
    over the batch themselves.

    A loss that needs the ground-truth labels (e.g. `DecoupledKD`) returns `True` from
    `needs_labels()` and accepts them as a keyword, `call(teacher_features, student_features,
    labels=None)`; the `Distiller` then calls it with `labels=y` (integer class ids `(batch,)`
    or one-hot `(batch, classes)`, as the dataset yields them).
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # The methods' former names: an override under them would be ignored silently (the
        # loss would receive the logits), so defining one is an error.
        for old, new in (("teacher_features", "teacher_taps"),
                         ("student_features", "student_taps")):
            if old in vars(cls):
                raise TypeError(f"{cls.__name__}.{old}() is now called {new}(); rename it.")

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

    def teacher_taps(self) -> tuple[Tap, ...]:
        """Where the teacher features `call` receives are read, in order."""
        return (LOGITS,)

    def student_taps(self) -> tuple[Tap, ...]:
        """Where the student features `call` receives are read, in order."""
        return (LOGITS,)

    def output_family(self) -> str | None:
        """Which model outputs this loss reads its logits as: `"categorical"` (softmax over the
        last axis), `"bernoulli"` (independent sigmoid units), or `None` (any: the loss
        compares raw tensors, e.g. logit matching or a feature loss)."""
        return None

    def temperature_variable(self) -> keras.Variable | None:
        """The non-trainable temperature variable a scheduler may assign, or `None`."""
        return None

    def needs_labels(self) -> bool:
        """Whether `call` needs the labels, passed as the keyword `labels=y`."""
        return False

    def build(self, teacher_shapes: Sequence[tuple], student_shapes: Sequence[tuple]) -> None:
        """Creates adapters from the static shapes of the features (one per tap)."""
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
    """Validates `temperature` and stores it in a non-trainable variable of `layer`.

    Raises:
        TypeError: if `temperature` is not a real number (see `keras_kd.validation`).
        ValueError: if it is not finite and `> 0`.
    """
    temperature = validation.positive(
        "temperature", temperature, hint="Pass the softening temperature T, e.g. 4.0."
    )
    return layer.add_weight(
        shape=(),
        initializer=keras.initializers.Constant(temperature),
        trainable=False,
        dtype="float32",
        name="temperature",
    )
