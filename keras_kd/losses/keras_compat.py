"""`keras.distillation`'s loss names and constructors, computed with keras_kd's math.

`LogitsDistillation(temperature=3.0, loss="kl_divergence")` and
`FeatureDistillation(loss="mse", teacher_layer_name=None, student_layer_name=None)` take exactly
the arguments of their `keras.distillation` (Keras 3.12+) namesakes, so code written for Keras
runs here after changing its imports. They are ordinary keras_kd losses: per-example float32
values that the `Distiller` reduces with the sample weights, one forward pass of each model per
step, a schedulable temperature variable, `.keras` serialization.

What differs from Keras, on purpose:
    - The KL form (Keras's default, `"kl_divergence"`) is `T^2 * KL(softmax(t/T) || softmax(s/T))`
      whatever way it is named. Keras applies the string / function form to `logits / T`
      without softmax and without `T^2`; only its `keras.losses.KLDivergence()` instance matches.
    - The categorical cross-entropy forms compare `softmax(t/T)` with the student's softened
      distribution and are multiplied by `T^2` (Hinton et al. 2015, eq. 2); Keras feeds raw
      `logits / T` to them as if they were probabilities / targets.
    - `FeatureDistillation` learns an adapter (as `HintDistillation(adapter="auto")`) when the
      teacher and student features have different shapes, where Keras fails.
    - A structure of losses (Keras's multi-output form) is refused: keras_kd distils
      single-output models.

The keras_kd names (`SoftTargetDistillation`, `LogitMatchingDistillation`, `HintDistillation`)
remain the primary API; these two classes exist for code arriving from `keras.distillation`.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_kd.adapters import AUTO, make_adapter
from keras_kd.losses.base import LOGITS, DistillationLoss, Tap, make_temperature
from keras_kd.losses.functional import (
    per_example_mean,
    soft_target_cross_entropy,
    soft_target_kl,
)


def _resolve_loss(loss, owner: str):
    """Keras's `_convert_loss_to_function` for one loss: a name becomes the Keras object."""
    if loss is None:
        raise ValueError(f"The `loss` argument of {owner} must not be None.")
    if isinstance(loss, (list, tuple, dict)):
        raise ValueError(
            f"{owner} got a structure of losses {loss!r}. keras.distillation uses one per "
            "output of a multi-output model; keras_kd distils single-output models, so pass "
            "one loss (a name, a keras.losses.Loss instance or a function)."
        )
    if isinstance(loss, str):
        return keras.losses.get(loss)  # raises ValueError for an unknown name
    if not callable(loss):
        raise ValueError(f"{owner} expects a loss name, Loss instance or function, got {loss!r}.")
    return loss


def _serialize_loss(loss):
    return loss if isinstance(loss, str) else keras.saving.serialize_keras_object(loss)


def _deserialize_loss(value):
    return keras.saving.deserialize_keras_object(value) if isinstance(value, dict) else value


def _is_kl(fn) -> bool:
    return isinstance(fn, keras.losses.KLDivergence) or fn is keras.losses.kl_divergence


def _is_categorical_ce(fn) -> bool:
    return (
        isinstance(fn, keras.losses.CategoricalCrossentropy)
        or fn is keras.losses.categorical_crossentropy
    )


def _is_sparse_ce(fn) -> bool:
    return (
        isinstance(fn, keras.losses.SparseCategoricalCrossentropy)
        or fn is keras.losses.sparse_categorical_crossentropy
    )


def _apply(fn, teacher, student):
    """`fn(teacher, student)` unreduced: a `keras.losses.Loss` through its unreduced `call` (the
    `Distiller` reduces with the sample weights), a function as it is."""
    teacher, student = ops.cast(teacher, "float32"), ops.cast(student, "float32")
    if isinstance(fn, keras.losses.Loss):
        return ops.cast(fn.call(teacher, student), "float32")
    return ops.cast(fn(teacher, student), "float32")


def _per_example(fn, teacher, student):
    """`fn(teacher, student)` as `(batch,)` float32 values (the mean over each example).

    A function returning a scalar gets that value for every example.
    """
    values = per_example_mean(_apply(fn, teacher, student))
    if len(values.shape) == 0:
        values = values * ops.ones((ops.shape(teacher)[0],), "float32")
    return values


def _per_position(fn, teacher, student):
    """`fn(teacher, student)` with the shape of the logits less their class axis.

    `(batch,)` for `(batch, classes)` logits, `(batch, steps)` for sequence outputs, like
    `soft_target_kl`; trailing axes a function left unreduced are averaged, and a scalar is
    given to every position.
    """
    values = _apply(fn, teacher, student)
    rank = len(teacher.shape) - 1
    while len(values.shape) > rank:
        values = ops.mean(values, axis=-1)
    if len(values.shape) < rank:
        if len(values.shape) != 0:
            raise ValueError(
                f"The loss {fn!r} returned values of shape {tuple(values.shape)} for logits of "
                f"shape {tuple(teacher.shape)}: expected one value per position "
                f"{tuple(teacher.shape[:-1])}, or a scalar."
            )
        values = values * ops.ones(ops.shape(teacher)[:-1], "float32")
    return values


def _same_structure(teacher_outputs, student_outputs) -> None:
    keras.tree.assert_same_structure(teacher_outputs, student_outputs)


@keras.saving.register_keras_serializable(package="keras_kd")
class LogitsDistillation(DistillationLoss):
    """`keras.distillation.LogitsDistillation`'s constructor with the soft-target math.

    Args:
        temperature: softening temperature `T > 0` (stored in a non-trainable variable, so
            `keras_kd.callbacks.TemperatureScheduler` can change it). Default 3.0, as in Keras.
        loss: how the softened logits are compared (default `"kl_divergence"`, as in Keras):
            - KL divergence (`"kl_divergence"`, `"kld"`, `keras.losses.kl_divergence`,
              `keras.losses.KLDivergence()`): `T^2 * KL(softmax(t/T) || softmax(s/T))`,
              the same values as `SoftTargetDistillation(T)`.
            - categorical cross-entropy (`"categorical_crossentropy"`, the function, or a
              `keras.losses.CategoricalCrossentropy` instance with either `from_logits`):
              `-T^2 * sum_k softmax(t/T)_k log softmax(s/T)_k` (its `label_smoothing` is
              honoured). It differs from the KL form by the teacher entropy: same gradients.
            - any other loss (`"mse"`, a `keras.losses.Loss`, a function `f(y_true, y_pred)`):
              `f(t/T, s/T)` on the scaled logits, as Keras documents (no `T^2`).
        name: optional name, also the key of this loss in the training logs.

    Returns (when called):
        float32 values of shape `logits.shape[:-1]`: `(batch,)` for `(batch, classes)` logits,
        per position for sequence / dense outputs, like `SoftTargetDistillation`; the
        `Distiller` reduces them with the sample weights.

    Raises:
        ValueError: for `loss=None`, a structure of losses (multi-output form), a sparse
            cross-entropy (the teacher gives distributions, not class ids), or an unknown name.
        TypeError: for a temperature that is not a number (Keras raises ValueError).

    Example:
        >>> from keras_kd.losses import LogitsDistillation   # was: keras.distillation
        >>> distiller = keras_kd.Distiller(teacher, student, LogitsDistillation(temperature=4.0))

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
        `T^2 * KL(softmax(t/T) || softmax(s/T))`.
    """

    def __init__(self, temperature=3.0, loss="kl_divergence", *, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        fn = _resolve_loss(loss, "LogitsDistillation")
        if _is_sparse_ce(fn):
            raise ValueError(
                "LogitsDistillation cannot use a sparse categorical cross-entropy: the teacher "
                "gives a distribution, not class ids. Use 'kl_divergence' (the default) or "
                "'categorical_crossentropy'."
            )
        if isinstance(fn, keras.losses.CategoricalCrossentropy):
            if fn.get_config().get("axis", -1) != -1:
                raise ValueError(
                    "LogitsDistillation softens logits over the last axis; got a "
                    f"CategoricalCrossentropy with axis={fn.get_config()['axis']}."
                )
        self._loss_config = loss
        self.loss = fn
        self.temperature = make_temperature(self, temperature)

    def output_family(self) -> str | None:
        """`"categorical"` for the KL and cross-entropy forms (softmax over the last axis);
        `None` for the forms that compare the scaled logits directly."""
        return "categorical" if _is_kl(self.loss) or _is_categorical_ce(self.loss) else None

    def temperature_variable(self) -> keras.Variable:
        return self.temperature

    def call(self, teacher_features, student_features):
        t_logits, s_logits = teacher_features[0], student_features[0]
        temperature = ops.cast(self.temperature, "float32")
        fn = self.loss
        if _is_kl(fn):
            return soft_target_kl(t_logits, s_logits, temperature)
        if _is_categorical_ce(fn):
            smoothing = 0.0
            if isinstance(fn, keras.losses.CategoricalCrossentropy):
                smoothing = float(fn.get_config().get("label_smoothing", 0.0))
            if smoothing == 0.0:
                return soft_target_cross_entropy(t_logits, s_logits, temperature)
            targets = ops.softmax(ops.cast(t_logits, "float32") / temperature, axis=-1)
            values = keras.losses.categorical_crossentropy(
                targets,
                ops.cast(s_logits, "float32") / temperature,
                from_logits=True,
                label_smoothing=smoothing,
            )
            return temperature * temperature * values
        return _per_position(
            fn,
            ops.cast(t_logits, "float32") / temperature,
            ops.cast(s_logits, "float32") / temperature,
        )

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        """Keras's method: the batch mean of the per-example values (a scalar)."""
        return ops.mean(self((teacher_outputs,), (student_outputs,)))

    def validate_outputs(self, teacher_outputs, student_outputs) -> None:
        """Raises `ValueError` when the two outputs do not have the same structure."""
        _same_structure(teacher_outputs, student_outputs)

    def validate_model_compatibility(self, teacher, student) -> None:
        """Keras's hook; logits need nothing beyond what the `Distiller` checks."""

    def get_config(self) -> dict:
        config = super().get_config()
        config["temperature"] = float(ops.convert_to_numpy(self.temperature))
        config["loss"] = _serialize_loss(self._loss_config)
        return config

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        config["loss"] = _deserialize_loss(config.get("loss", "kl_divergence"))
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_kd")
class FeatureDistillation(DistillationLoss):
    """`keras.distillation.FeatureDistillation`'s constructor on keras_kd taps.

    Args:
        loss: how the two features are compared, applied as `loss(teacher, student)` and
            averaged per example (default `"mse"`): a name (`"mse"`, `"mae"`,
            `"cosine_similarity"`, ...), a `keras.losses.Loss` instance or a function.
        teacher_layer_name: name of the teacher layer whose output is distilled; `None` for
            the teacher's logits (its final output, a final softmax undone).
        student_layer_name: the same for the student.
        name: optional name, also the key of this loss in the training logs.

    When the two features have different shapes, a trainable adapter maps the student feature
    to the teacher's shape first (as `HintDistillation(adapter="auto")`: a 1x1 convolution
    for feature maps, resizing when the spatial sizes differ; a Dense layer for vectors). It
    trains with the student and is not part of `distiller.student`. Equal shapes: no adapter,
    the values are Keras's.

    Returns (when called):
        `(batch,)` float32 values `mean over entries of loss(u, r(v))`.

    Raises:
        ValueError: for `loss=None`, a structure of losses (multi-output form) or an unknown
            name; for a layer name that is not a non-empty string or `None`.

    Example:
        >>> from keras_kd.losses import FeatureDistillation   # was: keras.distillation
        >>> feature = FeatureDistillation("mse", "teacher_block2", "student_block2")

    Reference:
        Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.
        `mean_k loss(u_k, r(v)_k)`, with `r` the identity when the shapes match.
    """

    def __init__(
        self, loss="mse", teacher_layer_name=None, student_layer_name=None, *, name=None, **kwargs
    ):
        super().__init__(name=name, **kwargs)
        for argument, value in (
            ("teacher_layer_name", teacher_layer_name),
            ("student_layer_name", student_layer_name),
        ):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{argument} must be a layer name or None, got {value!r}.")
        self._loss_config = loss
        self.loss = _resolve_loss(loss, "FeatureDistillation")
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        self.adapter = None

    @property
    def regressor(self):
        """Old name of `adapter`, kept because Keras looks up the adapter's weights in `.keras`
        files saved before the rename under this attribute name."""
        return self.adapter

    def teacher_taps(self) -> tuple[Tap, ...]:
        return (Tap(self.teacher_layer_name) if self.teacher_layer_name else LOGITS,)

    def student_taps(self) -> tuple[Tap, ...]:
        return (Tap(self.student_layer_name) if self.student_layer_name else LOGITS,)

    def build(self, teacher_shapes, student_shapes) -> None:
        if self.built:  # already built from its config when loaded from a .keras file
            return
        self.adapter = make_adapter(
            AUTO,
            teacher_shapes[0],
            student_shapes[0],
            batch_norm=False,
            name=f"{self.name}_adapter",
            role="adapter",
        )
        self.built = True

    def call(self, teacher_features, student_features):
        student = student_features[0]
        if self.adapter is not None:
            student = self.adapter(student)
        return _per_example(self.loss, teacher_features[0], student)

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        """Keras's method: the batch mean of the per-example values (a scalar)."""
        return ops.mean(self((teacher_outputs,), (student_outputs,)))

    def validate_outputs(self, teacher_outputs, student_outputs) -> None:
        """Raises `ValueError` when the two features do not have the same structure."""
        _same_structure(teacher_outputs, student_outputs)

    def validate_model_compatibility(self, teacher, student) -> None:
        """Raises `ValueError` when a named layer is missing or its model cannot be tapped.

        The messages are Keras's; the `Distiller` raises the same errors when it builds its
        feature extractors.
        """
        for role, model, layer_name in (
            ("teacher", teacher, self.teacher_layer_name),
            ("student", student, self.student_layer_name),
        ):
            if layer_name is None:
                continue
            try:
                has_graph = bool(model.inputs) and bool(model.outputs)
            except (AttributeError, ValueError):
                has_graph = False
            if not has_graph:
                raise ValueError(
                    "FeatureDistillation with specific layer names requires Functional or "
                    f"Sequential models. The {role} model appears to be subclassed (no "
                    "symbolic inputs/outputs)."
                )
            try:
                model.get_layer(name=layer_name)
            except ValueError as error:
                raise ValueError(f"In {role} model: {error}") from error

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "loss": _serialize_loss(self._loss_config),
                "teacher_layer_name": self.teacher_layer_name,
                "student_layer_name": self.student_layer_name,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        config["loss"] = _deserialize_loss(config.get("loss", "mse"))
        return cls(**config)


__all__ = ["FeatureDistillation", "LogitsDistillation"]
