"""`Distiller`: a `keras.Model` whose `train_step` teaches a student from a frozen teacher."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import keras
import tensorflow as tf
from keras import ops

from keras_kd import losses as kd_losses
from keras_kd.features import FeatureExtractor
from keras_kd.losses.base import LOGITS, DistillationLoss, Tap
from keras_kd.losses.functional import per_example_mean
from keras_kd.teachers.cached import CACHE_INPUTS_KEY, CACHE_OUTPUTS_KEY
from keras_kd.weighting import FixedWeighting, PathWeighting

_SPARSE_LOSS_NAMES = ("sparse_categorical_crossentropy", "SparseCategoricalCrossentropy")
_DENSE_LOSS_NAMES = (
    "categorical_crossentropy",
    "CategoricalCrossentropy",
    "kl_divergence",
    "KLDivergence",
    "categorical_focal_crossentropy",
    "CategoricalFocalCrossentropy",
)


def _num_replicas() -> int:
    return tf.distribute.get_strategy().num_replicas_in_sync


def _check_unit_interval(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r}.")
    if not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value}.")
    return float(value)


_PROBABILITY_CE_NAMES = (
    "sparse_categorical_crossentropy",
    "SparseCategoricalCrossentropy",
    "categorical_crossentropy",
    "CategoricalCrossentropy",
    "categorical_focal_crossentropy",
    "CategoricalFocalCrossentropy",
)


def _reads_probabilities(loss) -> bool:
    """True for a cross-entropy that expects probabilities (`from_logits=False`)."""
    if _loss_name(loss) not in _PROBABILITY_CE_NAMES:
        return False
    if isinstance(loss, keras.losses.Loss):
        return not loss.get_config().get("from_logits", False)
    return True  # the string / function forms default to from_logits=False


def _linear_output_layer(model: keras.Model):
    """The model's last layer if it visibly outputs logits (`activation=None`), else None."""
    try:
        last = model.outputs[0]._keras_history.operation
    except (AttributeError, ValueError, IndexError, TypeError):
        return None
    activation = getattr(last, "activation", None)
    return last if getattr(activation, "__name__", None) == "linear" else None


def _loss_name(loss) -> str:
    if isinstance(loss, keras.losses.Loss):
        return type(loss).__name__
    return getattr(loss, "__name__", type(loss).__name__)


def _unique(taps: Sequence[Tap]) -> list[Tap]:
    seen: list[Tap] = []
    for tap in taps:
        if tap not in seen:
            seen.append(tap)
    return seen


def _log_names(losses: Sequence[DistillationLoss]) -> list[str]:
    """Each loss's `log_name`; repeats get `_1`, `_2`, ... as Keras numbers layer names."""
    names, counts = [], {}
    for loss in losses:
        base = loss.log_name
        names.append(f"{base}_{counts[base]}" if base in counts else base)
        counts[base] = counts.get(base, 0) + 1
    return names


def _output_shape(model: keras.Model | None):
    try:
        return tuple(model.outputs[0].shape[1:]) if model is not None else None
    except (AttributeError, ValueError, IndexError, TypeError):
        return None


@keras.saving.register_keras_serializable(package="keras_kd")
class Distiller(keras.Model):
    """Trains `student` on `alpha * hard_loss + (1 - alpha) * sum_i w_i * distillation_i`.

    The teacher is frozen and always called with `training=False`, outside the gradient tape.
    Each model runs forward once per step: all the tensors the losses ask for (logits,
    intermediate features) come from one multi-output call of each model. Every loss is computed
    per example in float32 and reduced with the sample weights like Keras losses
    (`sum(w * l) / batch_size`), so `sample_weight` and `class_weight` act on the hard and the
    soft terms alike. Under `tf.distribute` the per-replica loss is divided by the number of
    replicas, as Keras's own trainer does, so the summed gradients equal the single-device ones.

    Args:
        teacher: the trained teacher `keras.Model` (logits, or a final `Softmax` layer, which is
            undone exactly). May be `None` when every batch carries cached teacher outputs (see
            `keras_kd.cache_teacher_logits`).
        student: the `keras.Model` to train. `predict`/`call` return its outputs, and
            `distiller.student.save(...)` saves it alone.
        distillation_losses: a `keras_kd.losses.DistillationLoss`, a registered name, or a
            list of them. Default: `SoftTargetDistillation(temperature=4.0)`.
        distillation_loss_weights: one non-negative weight per distillation loss (default all
            1.0), or a `keras_kd.weighting.PathWeighting` (e.g. learned weights).
        student_loss_weight: `alpha` in [0, 1], the weight of the hard-label loss given to
            `compile(loss=...)`. Stored in a non-trainable variable (schedulable).
        name: model name.

    Example:
        >>> distiller = keras_kd.Distiller(teacher, student, student_loss_weight=0.1)
        >>> distiller.compile(
        ...     "adam",
        ...     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        ...     metrics=["accuracy"])
        >>> distiller.fit(train_ds, validation_data=test_ds, epochs=5)
        >>> distiller.student.save("student.keras")

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
        `L = alpha * CE(y, s) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))`.
    """

    def __init__(
        self,
        teacher: keras.Model | None = None,
        student: keras.Model | None = None,
        distillation_losses: DistillationLoss | str | Sequence | None = None,
        distillation_loss_weights: Sequence[float] | PathWeighting | None = None,
        student_loss_weight: float = 0.1,
        name: str = "distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if teacher is not None and not isinstance(teacher, keras.Model):
            raise TypeError(f"teacher must be a keras.Model or None, got {type(teacher)!r}.")
        if not isinstance(student, keras.Model):
            raise TypeError(f"student must be a keras.Model, got {type(student)!r}.")
        if teacher is student:
            raise ValueError("teacher and student must be different models.")
        alpha = _check_unit_interval("student_loss_weight", student_loss_weight)

        if distillation_losses is None:
            distillation_losses = [kd_losses.SoftTargetDistillation(temperature=4.0)]
        elif not isinstance(distillation_losses, (list, tuple)):
            distillation_losses = [distillation_losses]
        if not distillation_losses:
            raise ValueError("distillation_losses must name at least one loss.")
        loss_objects = [kd_losses.get(loss) for loss in distillation_losses]

        if isinstance(distillation_loss_weights, PathWeighting):
            weighting = distillation_loss_weights
            if weighting.num_paths not in (None, len(loss_objects)):
                raise ValueError(
                    f"distillation_loss_weights was built for {weighting.num_paths} paths but "
                    f"there are {len(loss_objects)} distillation_losses."
                )
        else:
            weights = distillation_loss_weights
            if weights is None:
                weights = [1.0] * len(loss_objects)
            if isinstance(weights, (int, float)):
                weights = [weights]
            weights = list(weights)
            if len(weights) != len(loss_objects):
                raise ValueError(
                    f"Got {len(weights)} distillation_loss_weights for "
                    f"{len(loss_objects)} distillation_losses; give one weight per loss."
                )
            for i, w in enumerate(weights):
                if isinstance(w, bool) or not isinstance(w, (int, float)):
                    raise TypeError(f"distillation_loss_weights[{i}] must be a number, got {w!r}.")
                if not (math.isfinite(w) and w >= 0):
                    raise ValueError(
                        f"distillation_loss_weights[{i}] must be finite and >= 0, got {w}."
                    )
            weighting = FixedWeighting(weights, name="distillation_loss_weights")

        teacher_shape, student_shape = _output_shape(teacher), _output_shape(student)
        if teacher_shape is not None and student_shape is not None:
            if teacher_shape != student_shape:
                raise ValueError(
                    f"Teacher output shape {teacher_shape} differs from student output shape "
                    f"{student_shape}; both must predict the same classes."
                )

        self.teacher = teacher
        self.student = student
        if teacher is not None:
            teacher.trainable = False
        self.distillation_losses = loss_objects
        self.path_weighting = weighting
        self.student_loss_weight = keras.Variable(
            alpha, trainable=False, dtype="float32", name="student_loss_weight"
        )
        self._initial_student_loss_weight = alpha

        teacher_taps = _unique([t for loss in loss_objects for t in loss.teacher_features()])
        student_taps = _unique([t for loss in loss_objects for t in loss.student_features()])
        if teacher is None and any(tap != LOGITS for tap in teacher_taps):
            raise ValueError(
                "teacher=None works only with losses on logits, but the distillation_losses "
                f"tap teacher layers {[t.describe() for t in teacher_taps if t != LOGITS]}. "
                "Pass the teacher model (its adapters are sized from its layers); batches "
                "with cached teacher outputs still skip the teacher call."
            )
        self._teacher_taps = tuple(teacher_taps)
        self._tap_index = [
            (
                tuple(teacher_taps.index(t) for t in loss.teacher_features()),
                tuple(student_taps.index(t) for t in loss.student_features()),
            )
            for loss in loss_objects
        ]
        self._logit_pair = (
            (teacher_taps.index(LOGITS), student_taps.index(LOGITS))
            if LOGITS in teacher_taps and LOGITS in student_taps
            else None
        )
        self._student_features = FeatureExtractor(student, student_taps, "student")
        self._teacher_features = (
            FeatureExtractor(teacher, teacher_taps, "teacher") if teacher is not None else None
        )
        if self._teacher_features is not None and self._student_features.is_graph:
            t_shapes = self._teacher_features.shapes()
            s_shapes = self._student_features.shapes()
            for loss, (ti, si) in zip(loss_objects, self._tap_index):
                loss.build(tuple(t_shapes[i] for i in ti), tuple(s_shapes[j] for j in si))

        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        log_names = _log_names(loss_objects)
        self.path_trackers = (
            [keras.metrics.Mean(name=f"{name}_loss") for name in log_names]
            if len(loss_objects) > 1
            else []
        )
        # Learned path weights (e.g. UncertaintyWeighting) are logged as `<loss>_weight`.
        self.path_weight_trackers = (
            [keras.metrics.Mean(name=f"{name}_weight") for name in log_names]
            if weighting.trainable_weights
            else []
        )
        self._hard_loss = None
        self._hard_loss_config = None
        self.built = True

    # ------------------------------------------------------------------ compile / metrics
    def compile(
        self,
        optimizer="adam",
        loss=None,
        metrics=None,
        jit_compile: bool | str = False,
        **kwargs,
    ):
        """Configures training.

        Args:
            optimizer: optimizer for the student (and adapters / learned weights).
            loss: the hard-label loss applied to the student's outputs, e.g.
                `keras.losses.SparseCategoricalCrossentropy(from_logits=True)` for a student
                that outputs logits (the string `"sparse_categorical_crossentropy"` expects
                probabilities; compiling it for a logits student warns). Required when
                `student_loss_weight > 0`.
            metrics: metrics of the student's outputs, logged like `Model.compile` metrics.
            jit_compile: defaults to `False`: XLA made distillation steps slower on the CPUs
                this was measured on (see BENCHMARKS.md). Pass `True` or `"auto"` to opt in.
            **kwargs: passed to `keras.Model.compile` (`steps_per_execution`, ...).
        """
        if loss is None:
            if self._initial_student_loss_weight > 0:
                raise ValueError(
                    "compile(loss=...) is required when student_loss_weight > 0 (got "
                    f"{self._initial_student_loss_weight}): pass the hard-label loss, e.g. "
                    "loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), or set "
                    "student_loss_weight=0."
                )
            self._hard_loss = None
        else:
            self._hard_loss = keras.losses.get(loss)
            if self._hard_loss is None or not callable(self._hard_loss):
                raise ValueError(f"compile(loss=...) got an unknown loss {loss!r}.")
            last = _linear_output_layer(self.student)
            if last is not None and _reads_probabilities(self._hard_loss):
                warnings.warn(
                    f"compile(loss={loss!r}) reads the student's outputs as probabilities "
                    f"(from_logits=False), but the student '{self.student.name}' ends in layer "
                    f"'{last.name}' without activation, i.e. it outputs logits: the hard-label "
                    "loss would be wrong. Pass e.g. loss=keras.losses."
                    "SparseCategoricalCrossentropy(from_logits=True), or end the student in "
                    "keras.layers.Softmax().",
                    stacklevel=2,
                )
        self._hard_loss_config = loss
        super().compile(
            optimizer=optimizer, loss=None, metrics=metrics, jit_compile=jit_compile, **kwargs
        )

    def get_compile_config(self) -> dict:
        if not self.compiled:
            return {}
        return {
            "optimizer": keras.saving.serialize_keras_object(self.optimizer),
            "loss": keras.saving.serialize_keras_object(self._hard_loss_config),
            "metrics": keras.saving.serialize_keras_object(self._compile_config.config["metrics"]),
        }

    def compile_from_config(self, config: dict) -> None:
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        metrics = [self.loss_tracker, self.student_loss_tracker, self.distillation_loss_tracker]
        metrics.extend(self.path_trackers)
        metrics.extend(self.path_weight_trackers)
        if self.compiled and self._compile_metrics is not None:
            metrics.append(self._compile_metrics)
        return metrics

    @property
    def teacher_taps(self) -> tuple[Tap, ...]:
        """The teacher tensors the losses need, in the order cached outputs must follow."""
        return self._teacher_taps

    # ------------------------------------------------------------------ forward
    def call(self, inputs, training=None):
        """Returns the student's outputs (cached-teacher batches are accepted too)."""
        if isinstance(inputs, dict) and CACHE_OUTPUTS_KEY in inputs:
            inputs = inputs[CACHE_INPUTS_KEY]
        return self.student(inputs, training=training)

    def _teacher_signals(self, x):
        """Returns `(student inputs, teacher tensors)`, from the cache or one teacher call."""
        if isinstance(x, dict) and CACHE_OUTPUTS_KEY in x:
            cached = x[CACHE_OUTPUTS_KEY]
            cached = tuple(cached) if isinstance(cached, (list, tuple)) else (cached,)
            if len(cached) != len(self._teacher_taps):
                raise ValueError(
                    f"The batch carries {len(cached)} cached teacher tensor(s) but the "
                    f"distillation losses need {len(self._teacher_taps)}: "
                    f"{[t.describe() for t in self._teacher_taps]}. Cache with "
                    "keras_kd.cache_teacher_outputs(teacher, data, taps=distiller.teacher_taps)."
                )
            return x[CACHE_INPUTS_KEY], tuple(ops.cast(c, "float32") for c in cached)
        if self._teacher_features is None:
            raise ValueError(
                "This Distiller has no teacher, so every batch must carry cached teacher "
                "outputs (see keras_kd.cache_teacher_logits)."
            )
        outputs = self._teacher_features(x, training=False)[1:]
        return x, tuple(ops.stop_gradient(ops.cast(o, "float32")) for o in outputs)

    # ------------------------------------------------------------------ losses
    def _check_labels(self, y, y_pred) -> None:
        name = _loss_name(self._hard_loss)
        y_shape, p_shape = tuple(y.shape), tuple(y_pred.shape)
        if name in _SPARSE_LOSS_NAMES:
            ok = len(y_shape) == len(p_shape) - 1 or (
                len(y_shape) == len(p_shape) and y_shape[-1] == 1
            )
            if not ok:
                raise ValueError(
                    f"Labels of shape {y_shape} do not fit the compiled loss '{name}', which "
                    f"expects integer class ids of shape (batch,) for predictions of shape "
                    f"{p_shape}. For one-hot labels compile with 'categorical_crossentropy'."
                )
        elif name in _DENSE_LOSS_NAMES:
            if len(y_shape) != len(p_shape) or y_shape[-1] != p_shape[-1]:
                raise ValueError(
                    f"Labels of shape {y_shape} do not fit the compiled loss '{name}', which "
                    f"expects one-hot labels shaped like the predictions {p_shape}. For integer "
                    "class ids compile with 'sparse_categorical_crossentropy'."
                )

    def _hard_per_example(self, y, y_pred, batch):
        if y is None:
            if self._initial_student_loss_weight > 0:
                raise ValueError(
                    "The dataset yields no labels but student_loss_weight="
                    f"{self._initial_student_loss_weight} > 0. Yield (x, y) pairs, or set "
                    "student_loss_weight=0 to learn from the teacher alone."
                )
            return ops.zeros((batch,), "float32")
        if self._hard_loss is None:
            return ops.zeros((batch,), "float32")
        self._check_labels(y, y_pred)
        fn = self._hard_loss
        y_pred = ops.cast(y_pred, "float32")
        values = fn.call(y, y_pred) if isinstance(fn, keras.losses.Loss) else fn(y, y_pred)
        return per_example_mean(values)

    def _reduce(self, values, sample_weight):
        """Keras's `sum_over_batch_size`: `sum(w * v) / batch_size`."""
        if sample_weight is not None:
            sw = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
            values = values * sw
        return ops.mean(values)

    def compute_distillation_terms(
        self, y, student_outputs, teacher_outputs, sample_weight=None, training=False
    ):
        """All loss terms of one batch, reduced over the batch.

        Args:
            y: labels or `None`.
            student_outputs: `(student_output, *student_taps)` from the student extractor.
            teacher_outputs: teacher taps in `self._teacher_taps` order.
            sample_weight: `(batch,)` weights or `None`.
            training: passed to the losses, so their adapters (e.g. BatchNormalization in a
                regressor) run in training mode during `train_step`.

        Returns:
            dict with scalar `loss`, `student_loss`, `distillation_loss` and `paths` (a list of
            per-path scalars).
        """
        y_pred = student_outputs[0]
        batch = ops.shape(y_pred)[0]
        if self._logit_pair is not None:
            t_classes = teacher_outputs[self._logit_pair[0]].shape[-1]
            s_classes = student_outputs[1 + self._logit_pair[1]].shape[-1]
            if t_classes is not None and s_classes is not None and t_classes != s_classes:
                raise ValueError(
                    f"Teacher logits have {t_classes} classes but student logits have "
                    f"{s_classes}; both must predict the same classes."
                )
        hard = self._hard_per_example(y, y_pred, batch)
        paths = []
        for loss, (ti, si) in zip(self.distillation_losses, self._tap_index):
            value = loss(
                tuple(teacher_outputs[i] for i in ti),
                tuple(student_outputs[1 + j] for j in si),
                training=training,
            )
            paths.append(ops.cast(value, "float32"))
        path_matrix = ops.stack(paths, axis=-1)
        soft = self.path_weighting(path_matrix)
        alpha = ops.cast(self.student_loss_weight, "float32")
        total = alpha * hard + (1.0 - alpha) * soft
        return {
            "loss": self._reduce(total, sample_weight),
            "student_loss": self._reduce(hard, sample_weight),
            "distillation_loss": self._reduce(soft, sample_weight),
            "paths": [self._reduce(p, sample_weight) for p in paths],
        }

    def _update_trackers(self, terms, batch) -> None:
        self.loss_tracker.update_state(terms["loss"], sample_weight=batch)
        self.student_loss_tracker.update_state(terms["student_loss"], sample_weight=batch)
        self.distillation_loss_tracker.update_state(
            terms["distillation_loss"], sample_weight=batch
        )
        for tracker, value in zip(self.path_trackers, terms["paths"]):
            tracker.update_state(value, sample_weight=batch)
        if self.path_weight_trackers:
            weights = self.path_weighting.current_weights()
            for i, tracker in enumerate(self.path_weight_trackers):
                tracker.update_state(weights[i])

    # ------------------------------------------------------------------ steps
    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, teacher_outputs = self._teacher_signals(x)
        with tf.GradientTape() as tape:
            student_outputs = self._student_features(x, training=True)
            terms = self.compute_distillation_terms(y, student_outputs, teacher_outputs,
                                                    sample_weight, training=True)
            # Per-replica share of the global mean: replicas' gradients are summed.
            loss = self.optimizer.scale_loss(terms["loss"] / _num_replicas())
        variables = self.trainable_variables
        gradients = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        self._update_trackers(terms, ops.shape(student_outputs[0])[0])
        return self.compute_metrics(x, y, student_outputs[0], sample_weight=sample_weight)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, teacher_outputs = self._teacher_signals(x)
        student_outputs = self._student_features(x, training=False)
        terms = self.compute_distillation_terms(y, student_outputs, teacher_outputs,
                                                sample_weight)
        self._update_trackers(terms, ops.shape(student_outputs[0])[0])
        return self.compute_metrics(x, y, student_outputs[0], sample_weight=sample_weight)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self(x, training=False)

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict:
        weighting = self.path_weighting
        if isinstance(weighting, FixedWeighting):
            weights = [float(w) for w in ops.convert_to_numpy(weighting.weights_variable)]
        else:
            weights = keras.saving.serialize_keras_object(weighting)
        return {
            "name": self.name,
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "student": keras.saving.serialize_keras_object(self.student),
            "distillation_losses": [
                keras.saving.serialize_keras_object(loss) for loss in self.distillation_losses
            ],
            "distillation_loss_weights": weights,
            "student_loss_weight": float(ops.convert_to_numpy(self.student_loss_weight)),
        }

    @classmethod
    def from_config(cls, config: dict) -> Distiller:
        config = dict(config)
        for key in ("teacher", "student"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        config["distillation_losses"] = [
            keras.saving.deserialize_keras_object(c) for c in config["distillation_losses"]
        ]
        weights = config.get("distillation_loss_weights")
        if isinstance(weights, dict):
            config["distillation_loss_weights"] = keras.saving.deserialize_keras_object(weights)
        return cls(**config)
