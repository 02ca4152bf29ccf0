"""`Ensemble`: several frozen teachers presented to the `Distiller` as one teacher."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_kd import validation
from keras_kd.features import FeatureExtractor
from keras_kd.losses.base import LOGITS
from keras_kd.teachers.cached import CACHE_INPUTS_KEY, CACHE_OUTPUTS_KEY, _as_dataset

COMBINE_MODES = ("probabilities", "logits", "confidence")
CONFIDENCE_SOURCES = ("entropy", "label")


def confidence_weights(teacher_logits, weights, temperature=1.0, labels=None):
    """Per-example weights of each teacher from its confidence; they sum to 1 per example.

    Args:
        teacher_logits: `(teachers, batch, classes)` logits.
        weights: `(teachers,)` prior weights (positive, summing to 1).
        temperature: softening temperature `T > 0` of the teachers' distributions.
        labels: optional `(batch,)` integer class ids. Without labels a teacher's confidence is
            its negative entropy; with labels it is the log-probability it gives the label.

    Returns:
        `(teachers, batch)` float32 weights, `softmax_k(log w_k + score_k)` over teachers, with
        `score_k = -H(softmax(z_k / T))` or `score_k = log softmax(z_k / T)[y]`.

    Example:
        >>> confidence_weights(ops.stack([z_a, z_b]), [0.5, 0.5], 4.0)  # (2, batch)

    Reference:
        Negative-entropy weighting: Kwon et al., "Adaptive Knowledge Distillation Based on
        Entropy", ICASSP 2020. Label agreement: Zhang et al., "Confidence-Aware Multi-Teacher
        Knowledge Distillation", ICASSP 2022 (weights from each teacher's cross-entropy with
        the label). `c_k(x) = softmax_k(log w_k + score_k(x))`.
    """
    t = ops.cast(temperature, "float32")
    log_p = ops.log_softmax(ops.cast(teacher_logits, "float32") / t, axis=-1)
    if labels is None:
        score = ops.sum(ops.exp(log_p) * log_p, axis=-1)  # -entropy, (teachers, batch)
    else:
        labels = ops.reshape(ops.cast(labels, "int32"), (1, -1, 1))
        labels = ops.broadcast_to(labels, (ops.shape(log_p)[0], ops.shape(log_p)[1], 1))
        score = ops.squeeze(ops.take_along_axis(log_p, labels, axis=-1), axis=-1)
    log_w = ops.reshape(ops.log(ops.cast(weights, "float32")), (-1, 1))
    return ops.softmax(log_w + score, axis=0)


def combine_teacher_logits(
    teacher_logits, weights, combine="probabilities", temperature=1.0, labels=None
):
    """Combines several teachers' logits into one logit vector.

    Args:
        teacher_logits: `(teachers, batch, classes)` logits.
        weights: `(teachers,)` positive weights summing to 1.
        combine: `"probabilities"` (weighted mean of softened distributions), `"logits"`
            (weighted mean of logits) or `"confidence"` (per-example weights from
            `confidence_weights`, then the weighted mean of softened distributions).
        temperature: `T > 0`; in the probability modes `softmax(output / T)` is exactly the
            averaged softened distribution, so `T` must equal the distillation loss temperature.
        labels: optional `(batch,)` class ids, used by `"confidence"` only.

    Returns:
        `(batch, classes)` float32 logits:
        `T * log(sum_k c_k softmax(z_k / T))` for the probability modes (`c_k = w_k`, or the
        per-example confidence weights), `sum_k w_k z_k` for `"logits"`.

    Reference:
        Hinton, Vinyals & Dean 2015 (ensemble as teacher); You et al., "Learning from Multiple
        Teacher Networks", KDD 2017 (averaged soft targets).
    """
    validation.one_of("combine", combine, COMBINE_MODES)
    z = ops.cast(teacher_logits, "float32")
    w = ops.cast(weights, "float32")
    if combine == "logits":
        return ops.sum(ops.reshape(w, (-1, 1, 1)) * z, axis=0)
    t = ops.cast(temperature, "float32")
    if combine == "confidence":
        log_c = ops.log(confidence_weights(z, w, t, labels))[..., None]
    else:
        log_c = ops.reshape(ops.log(w), (-1, 1, 1))
    log_p = ops.log_softmax(z / t, axis=-1)
    return t * ops.logsumexp(log_c + log_p, axis=0)


def _normalized_weights(weights, count: int) -> list[float]:
    if weights is None:
        return [1.0 / count] * count
    hint = "Give one positive weight per teacher, in the order of teachers."
    weights = validation.weights("weights", weights, count, hint=hint)
    # The log of each weight enters the combination: a zero weight is refused, not dropped.
    weights = [validation.positive(f"weights[{i}]", w, hint=hint) for i, w in enumerate(weights)]
    total = sum(weights)
    return [w / total for w in weights]


@keras.saving.register_keras_serializable(package="keras_kd")
class Ensemble(keras.Model):
    """Several frozen teachers behind one teacher interface: `ensemble(x)` returns logits.

    Use it wherever a teacher goes (`keras_kd.Distiller(ensemble, student)`,
    `keras_kd.cache_teacher_logits(ensemble, x, y)`). The teachers see the same inputs and may
    have any architecture; each returns logits (a final softmax is undone exactly, as in the
    `Distiller`). They are frozen (`trainable = False`) and always run with `training=False`.
    Only logit losses can use an ensemble (it has no intermediate layers to tap).

    In the probability modes the output is `T * log(sum_k c_k softmax(z_k / T))`, so that a
    soft-target loss at the **same** temperature `T` sees exactly the averaged distribution
    `softmax(output / T) = sum_k c_k softmax(z_k / T)`. Set `temperature` to the loss
    temperature (or pass the loss's temperature variable to keep them linked under a
    `TemperatureScheduler`).

    Label agreement (`combine="confidence", confidence="label"`) needs the labels, which a
    teacher call does not receive: precompute the targets with
    `cache_ensemble_logits(ensemble, x, y)` and train the `Distiller` on the cached dataset.

    Args:
        teachers: a non-empty list of trained `keras.Model` classifiers with the same classes.
        weights: one positive weight per teacher (normalized to sum to 1); default uniform.
        combine: `"probabilities"` (default), `"logits"` or `"confidence"`.
        temperature: `T > 0` of the probability modes, a number or a scalar `keras.Variable`
            (e.g. `SoftTargetDistillation(...).temperature`) shared with the loss.
        confidence: `"entropy"` (default; score = negative entropy) or `"label"` (score =
            log-probability of the label; needs `cache_ensemble_logits`), for
            `combine="confidence"`.
        name: model name.

    Example:
        >>> loss = keras_kd.SoftTargetDistillation(temperature=4.0)
        >>> teacher = keras_kd.teachers.Ensemble([t1, t2, t3], temperature=loss.temperature)
        >>> keras_kd.Distiller(teacher, student, distillation_losses=loss)

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015;
        You et al., "Learning from Multiple Teacher Networks", KDD 2017.
        `T * log(sum_k c_k softmax(z_k / T))`.
    """

    def __init__(
        self,
        teachers: Sequence[keras.Model],
        weights: Sequence[float] | None = None,
        combine: str = "probabilities",
        temperature: float | keras.Variable = 1.0,
        confidence: str = "entropy",
        name: str = "ensemble",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        teachers = list(teachers) if isinstance(teachers, (list, tuple)) else None
        if not teachers:
            raise ValueError("teachers must be a non-empty list of keras.Model.")
        for i, teacher in enumerate(teachers):
            if not isinstance(teacher, keras.Model):
                raise TypeError(f"teachers[{i}] must be a keras.Model, got {type(teacher)!r}.")
        validation.one_of("combine", combine, COMBINE_MODES)
        validation.one_of("confidence", confidence, CONFIDENCE_SOURCES)
        # A variable is checked on its current value; a scheduler then keeps it finite and > 0.
        value = validation.positive(
            "temperature", temperature, hint="Pass the soft-target loss temperature, e.g. 4.0."
        )
        if isinstance(temperature, keras.Variable):
            # Read, not owned: bypass Keras attribute tracking so the loss's variable is not
            # also saved as a weight of the ensemble (a reloaded ensemble gets the float value).
            object.__setattr__(self, "_temperature", temperature)
        else:
            self._temperature = value
        self.teachers = teachers
        for teacher in teachers:
            teacher.trainable = False
        self.teacher_weights = _normalized_weights(weights, len(teachers))
        self.combine = combine
        self.confidence = confidence
        self._extractors = [FeatureExtractor(t, (LOGITS,), "teacher") for t in teachers]
        self.trainable = False

    @property
    def temperature(self) -> float:
        """The current temperature of the probability modes."""
        return float(ops.convert_to_numpy(self._temperature))

    def teacher_logits(self, inputs):
        """`(teachers, batch, classes)` float32 logits of every teacher (`training=False`)."""
        logits = [ops.cast(e.logits(inputs), "float32") for e in self._extractors]
        shapes = {tuple(z.shape[1:]) for z in logits}
        if len(shapes) > 1:
            raise ValueError(f"The teachers predict different output shapes {sorted(shapes)}.")
        return ops.stack(logits, axis=0)

    def call(self, inputs, training=None, labels=None):
        """Returns the combined `(batch, classes)` logits; `labels` only for label confidence."""
        if self.combine == "confidence" and self.confidence == "label" and labels is None:
            raise ValueError(
                "Ensemble(confidence='label') needs the labels, which a Distiller teacher call "
                "does not pass: use keras_kd.teachers.cache_ensemble_logits(ensemble, x, y) "
                "and train on the cached dataset, or use confidence='entropy'."
            )
        if self.confidence != "label":
            labels = None
        return combine_teacher_logits(
            self.teacher_logits(inputs),
            self.teacher_weights,
            self.combine,
            self._temperature,
            labels,
        )

    def weights_per_example(self, inputs, labels=None):
        """The `(teachers, batch)` weights `c_k(x)` the ensemble applies (sum to 1 per example)."""
        z = self.teacher_logits(inputs)
        batch = ops.shape(z)[1]
        if self.combine != "confidence":
            return ops.broadcast_to(
                ops.reshape(ops.convert_to_tensor(self.teacher_weights, "float32"), (-1, 1)),
                (len(self.teachers), batch),
            )
        labels = labels if self.confidence == "label" else None
        return confidence_weights(z, self.teacher_weights, self._temperature, labels)

    def compute_output_shape(self, input_shape):
        return self.teachers[0].compute_output_shape(input_shape)

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "teachers": [keras.saving.serialize_keras_object(t) for t in self.teachers],
            "weights": list(self.teacher_weights),
            "combine": self.combine,
            "temperature": self.temperature,
            "confidence": self.confidence,
        }

    @classmethod
    def from_config(cls, config: dict) -> Ensemble:
        config = dict(config)
        config["teachers"] = [keras.saving.deserialize_keras_object(t) for t in config["teachers"]]
        return cls(**config)


def cache_ensemble_logits(
    ensemble: Ensemble, data, y=None, sample_weight=None, batch_size: int = 256
) -> tf.data.Dataset:
    """`keras_kd.cache_teacher_logits` for an `Ensemble`, passing the labels to it.

    The labels reach the ensemble, so `confidence="label"` weights each teacher per example by
    the probability it gives the true class. Elements are
    `({"inputs": x, "teacher_outputs": (logits,)}, y[, w])`, unbatched and in the order of
    `data`, which the `Distiller` trains on without calling a teacher.

    Args:
        ensemble: the `Ensemble`.
        data: an array, or a finite `tf.data.Dataset` of `(x, y)` or `(x, y, w)` with a
            deterministic order.
        y: labels (integer class ids) when `data` is an array.
        sample_weight: per-example weights when `data` is an array.
        batch_size: batch size of the ensemble pass (and of array inputs).

    Returns:
        An unbatched `tf.data.Dataset`.

    Raises:
        ValueError: when there are no labels or the data is empty.

    Example:
        >>> ens = Ensemble([t1, t2], combine="confidence", confidence="label", temperature=4.0)
        >>> cached = cache_ensemble_logits(ens, x_train, y_train)
        >>> distiller.fit(cached.shuffle(10000).batch(128), epochs=5)
    """
    if not isinstance(ensemble, Ensemble):
        raise TypeError(f"ensemble must be a keras_kd.teachers.Ensemble, got {type(ensemble)!r}.")
    batch_size = validation.positive_int("batch_size", batch_size)
    dataset = _as_dataset(data, y, sample_weight, batch_size)

    @tf.function(reduce_retracing=True)
    def forward(x, labels):
        return ensemble(x, training=False, labels=labels)

    inputs, logits, rest = [], [], None
    for element in dataset:
        if not isinstance(element, tuple) or len(element) < 2:
            raise ValueError("cache_ensemble_logits needs labels: pass y or (x, y) batches.")
        x = element[0]
        labels = tf.reshape(tf.cast(element[1], tf.int32), (-1,))
        logits.append(forward(x, labels).numpy())
        inputs.append(tf.nest.map_structure(lambda t: t.numpy(), x))
        rest = [[] for _ in element[1:]] if rest is None else rest
        for store, value in zip(rest, element[1:]):
            store.append(value.numpy())
    if not logits:
        raise ValueError("cache_ensemble_logits got an empty dataset.")
    features = {
        CACHE_INPUTS_KEY: tf.nest.map_structure(lambda *parts: np.concatenate(parts), *inputs),
        CACHE_OUTPUTS_KEY: {LOGITS.key: np.concatenate(logits)},
    }
    return tf.data.Dataset.from_tensor_slices((features, *(np.concatenate(s) for s in rest)))
