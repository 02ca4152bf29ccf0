"""Pseudo-labels for unlabelled data, and the labelled + unlabelled set of data distillation.

Data distillation (Radosavovic et al., CVPR 2018) labels unlabelled data with a teacher's
multi-transform predictions (`TransformEnsemble`), keeps the confident ones, and trains a
student on the labelled and the pseudo-labelled data together. The paper picks its score
threshold so that the pseudo-labelled data has the labelled data's label statistics (there:
the average number of objects per image). A classification label set has one label per image,
so its statistic is the class distribution: `matched_thresholds` picks one confidence
threshold per class so that no class of the kept pseudo-labels exceeds its share in the
labelled set.

`data_distillation_set` builds the one dataset `Distiller.fit` trains on: labelled examples
with their labels and unlabelled examples with their pseudo-labels, each with the teacher's
(cached) soft targets, and per-term sample weights `{"label": w, "distillation": 1}`: the
hard-label loss sees the labelled examples only (`w` = 1 for them, 0 for the pseudo-labelled
ones), the soft loss sees every example.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_kd import validation
from keras_kd.teachers.cached import CACHE_INPUTS_KEY, CACHE_OUTPUTS_KEY


def _thresholds(threshold, num_classes: int) -> np.ndarray:
    """A scalar or per-class threshold as a `(classes,)` float array in [0, 1] (or +inf)."""
    if isinstance(threshold, (list, tuple, np.ndarray)):
        values = np.asarray(threshold, np.float64).reshape(-1)
        if values.size != num_classes:
            raise ValueError(f"threshold must be one number in [0, 1] or one per class "
                             f"({num_classes}), got {values.size} values.")
        for i, v in enumerate(values):
            if not (np.isposinf(v) or 0.0 <= v <= 1.0):
                raise ValueError(f"threshold[{i}] must be in [0, 1] (or +inf: keep none of "
                                 f"that class), got {v!r}.")
        return values
    value = validation.unit_interval(
        "threshold", threshold,
        hint="It is the smallest confidence (teacher probability of its arg-max class) kept; "
             "or pass per-class thresholds, e.g. from matched_thresholds.")
    return np.full((num_classes,), value)


def pseudo_labels(probabilities, threshold):
    """The teacher's arg-max classes and which of them are confident enough to keep.

    Args:
        probabilities: `(n, classes)` class probabilities (e.g. `softmax` of a
            `TransformEnsemble`'s output).
        threshold: a number in [0, 1], or one per class (`+inf` keeps none of a class).

    Returns:
        `(labels, selected)`: `(n,)` int64 arg-max classes, and `(n,)` bool
        `max_k p_k >= threshold[label]`.

    Raises:
        ValueError, TypeError: a threshold outside [0, 1], the wrong number of thresholds,
            probabilities that are not a 2-D array.

    Example:
        >>> labels, keep = pseudo_labels(probs, 0.9)

    Reference:
        Radosavovic et al., "Data Distillation: Towards Omni-Supervised Learning", CVPR 2018.
        `y = argmax_k p_k`, kept when `max_k p_k >= tau_y`.
    """
    p = np.asarray(probabilities, np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (examples, classes), got shape {p.shape}.")
    tau = _thresholds(threshold, p.shape[1])
    labels = np.argmax(p, axis=1).astype(np.int64)
    confidence = p[np.arange(len(p)), labels]
    return labels, confidence >= tau[labels]


def matched_thresholds(probabilities, labelled_labels, num_classes: int | None = None,
                       min_threshold: float = 0.0) -> np.ndarray:
    """Per-class thresholds that bring the pseudo-labels to the labelled set's class shares.

    With `pi_c` the share of class `c` among `labelled_labels`, `n_c` the unlabelled examples
    whose arg-max is `c` with confidence `>= min_threshold`, and `n = sum_c n_c`, class `c`
    keeps its `k_c = min(n_c, floor(pi_c * n))` most confident examples: no class exceeds its
    labelled share of the candidates, so a class the teacher over-predicts is cut back to its
    share (its least confident pseudo-labels dropped), and a class predicted less often than
    its share keeps all its candidates (exact proportions would discard most of the data for
    the sake of the rarest class). `tau_c` is the confidence of the `k_c`-th (ties at it are
    kept); a class with nothing to keep (absent from the labelled set, or never predicted)
    gets `+inf`.

    Args:
        probabilities: `(n, classes)` probabilities on the unlabelled data.
        labelled_labels: `(m,)` integer labels of the labelled data.
        num_classes: `C` (default: `probabilities.shape[1]`).
        min_threshold: no threshold goes below this, in [0, 1].

    Returns:
        `(classes,)` float64 thresholds, for `pseudo_labels`.

    Raises:
        ValueError, TypeError: `min_threshold` outside [0, 1], labels outside `[0, C)`, no
            labelled examples.

    Example:
        >>> tau = matched_thresholds(probs_unlabelled, y_labelled)
        >>> labels, keep = pseudo_labels(probs_unlabelled, tau)

    Reference:
        Radosavovic et al. 2018, sec. 4: the score threshold makes the pseudo-labelled data's
        label statistics match the labelled data's (there, objects per image; for
        classification, the class shares). `k_c = min(n_c, floor(pi_c * n))`.
    """
    p = np.asarray(probabilities, np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (examples, classes), got shape {p.shape}.")
    classes = p.shape[1] if num_classes is None else validation.positive_int(
        "num_classes", num_classes)
    floor = validation.unit_interval("min_threshold", min_threshold)
    y = np.asarray(labelled_labels).reshape(-1)
    if y.size == 0:
        raise ValueError("labelled_labels is empty: the thresholds match its class shares.")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= classes:
        raise ValueError(f"labelled_labels must be integer class ids in [0, {classes}).")
    share = np.bincount(y, minlength=classes) / y.size
    labels = np.argmax(p, axis=1)
    confidence = p[np.arange(len(p)), labels]
    candidates = [np.sort(confidence[(labels == c) & (confidence >= floor)])[::-1]
                  for c in range(classes)]
    total = sum(len(c) for c in candidates)
    tau = np.full((classes,), np.inf)
    for c in range(classes):
        k = min(len(candidates[c]), math.floor(share[c] * total + 1e-9))
        if k > 0:
            tau[c] = candidates[c][k - 1]
    return tau


@dataclasses.dataclass
class DataDistillationSet:
    """What `data_distillation_set` returns.

    Attributes:
        dataset: unbatched `tf.data.Dataset` of `({"keras_kd_inputs": x,
            "keras_kd_teacher_outputs": {"logits": t}}, y, {"label": w, "distillation": 1})`:
            labelled examples first, then the kept unlabelled ones. Shuffle and batch it.
        thresholds: `(classes,)` the confidence thresholds used.
        pseudo_labels: `(n_unlabelled,)` the teacher's arg-max on the unlabelled data.
        selected: `(n_unlabelled,)` bool, the unlabelled examples kept.
        num_labelled: labelled examples in the set.
    """

    dataset: tf.data.Dataset
    thresholds: np.ndarray
    pseudo_labels: np.ndarray
    selected: np.ndarray
    num_labelled: int

    @property
    def num_selected(self) -> int:
        return int(self.selected.sum())


def _logits(teacher: keras.Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    @tf.function(reduce_retracing=True)
    def forward(batch):
        return ops.cast(teacher(batch, training=False), "float32")

    parts = [forward(tf.constant(x[i:i + batch_size])).numpy()
             for i in range(0, len(x), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def data_distillation_set(
    teacher: keras.Model,
    x_labelled,
    y_labelled,
    x_unlabelled,
    *,
    threshold="match",
    min_threshold: float = 0.0,
    temperature: float = 1.0,
    batch_size: int = 256,
) -> DataDistillationSet:
    """Labels the unlabelled data with `teacher` and joins it to the labelled data.

    The teacher (typically a `TransformEnsemble`) runs once over both sets; its outputs are
    cached as the soft targets of every example. Unlabelled examples are kept when their
    confidence `max softmax(t / temperature)` reaches the threshold of their pseudo-label.

    Args:
        teacher: a `keras.Model` returning logits (e.g. `TransformEnsemble`).
        x_labelled, y_labelled: the labelled arrays (integer labels).
        x_unlabelled: the unlabelled array.
        threshold: `"match"` (`matched_thresholds` on the labelled class shares), a number in
            [0, 1], or one per class.
        min_threshold: the floor of `"match"`, in [0, 1].
        temperature: `T` of the confidence `softmax(t / T)` (1: the teacher's probabilities;
            for a `TransformEnsemble` at temperature `T`, pass that `T`).
        batch_size: batch size of the teacher pass.

    Returns:
        A `DataDistillationSet`.

    Raises:
        TypeError, ValueError: bad thresholds (outside [0, 1]), empty arrays, mismatched
            lengths, before the teacher runs.

    Example:
        >>> dd = data_distillation_set(TransformEnsemble(teacher, transforms), x_l, y_l, x_u)
        >>> distiller = keras_kd.Distiller(None, student, keras_kd.SoftTargetDistillation(1.0),
        ...                                student_loss_weight=0.5)
        >>> distiller.compile("adam", loss=keras.losses.SparseCategoricalCrossentropy(
        ...     from_logits=True), weighted_metrics=["accuracy"])  # on the labelled ones
        >>> distiller.fit(dd.dataset.shuffle(60000).batch(128), epochs=10)

    Reference:
        Radosavovic et al., "Data Distillation: Towards Omni-Supervised Learning", CVPR 2018.
        Student loss on labelled + pseudo-labelled data; here
        `alpha * mean(w * CE(y, s)) + (1 - alpha) * mean(KL(t || s))`, `w` = is-labelled.
    """
    if not isinstance(teacher, keras.Model):
        raise TypeError(f"teacher must be a keras.Model, got {type(teacher)!r}.")
    x_l = np.asarray(x_labelled, np.float32)
    y_l = np.asarray(y_labelled).reshape(-1)
    x_u = np.asarray(x_unlabelled, np.float32)
    if len(x_l) == 0 or len(x_l) != len(y_l):
        raise ValueError(f"x_labelled and y_labelled must be non-empty and of the same length, "
                         f"got {len(x_l)} and {len(y_l)}.")
    if len(x_u) == 0:
        raise ValueError("x_unlabelled is empty: data distillation needs unlabelled data.")
    if not np.issubdtype(y_l.dtype, np.integer):
        raise TypeError(f"y_labelled must hold integer class ids, got dtype {y_l.dtype}.")
    if isinstance(threshold, str):
        validation.one_of("threshold", threshold, ("match",),
                          hint="Or pass a number in [0, 1], or one per class.")
    else:
        _thresholds(threshold, 2 if np.ndim(threshold) == 0 else np.size(threshold))
    validation.unit_interval("min_threshold", min_threshold)
    temperature = validation.positive("temperature", temperature)
    batch_size = validation.positive_int("batch_size", batch_size)

    t_l = _logits(teacher, x_l, batch_size)
    t_u = _logits(teacher, x_u, batch_size)
    classes = t_u.shape[-1]
    if y_l.min() < 0 or y_l.max() >= classes:
        raise ValueError(f"y_labelled must be class ids in [0, {classes}).")
    probs = ops.convert_to_numpy(ops.softmax(t_u / temperature, axis=-1))
    if isinstance(threshold, str):
        tau = matched_thresholds(probs, y_l, classes, min_threshold)
    else:
        tau = _thresholds(threshold, classes)
    labels, keep = pseudo_labels(probs, tau)
    x = np.concatenate([x_l, x_u[keep]])
    t = np.concatenate([t_l, t_u[keep]])
    y = np.concatenate([y_l.astype(np.int64), labels[keep]])
    w_label = np.concatenate([np.ones(len(x_l), np.float32), np.zeros(int(keep.sum()),
                                                                         np.float32)])
    w_soft = np.ones(len(x), np.float32)
    features = {CACHE_INPUTS_KEY: x, CACHE_OUTPUTS_KEY: {"logits": t}}
    dataset = tf.data.Dataset.from_tensor_slices(
        (features, y, {"label": w_label, "distillation": w_soft}))
    return DataDistillationSet(dataset=dataset, thresholds=tau, pseudo_labels=labels,
                               selected=keep, num_labelled=len(x_l))
