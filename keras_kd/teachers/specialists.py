"""`Specialists`: a generalist and class-subset specialists combined into one full-class teacher."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from keras_kd import validation
from keras_kd.features import FeatureExtractor
from keras_kd.losses.base import LOGITS

_EPSILON = 1e-12


def _scatter_matrix(subset: Sequence[int], num_classes: int) -> np.ndarray:
    """`(len(subset) + 1, classes)` 0/1 matrix putting a specialist's classes in place."""
    matrix = np.zeros((len(subset) + 1, num_classes), np.float32)
    for i, c in enumerate(subset):
        matrix[i, c] = 1.0
    return matrix


def combine_specialists(
    generalist_probs,
    specialist_probs,
    class_subsets: Sequence[Sequence[int]],
    active=None,
    iterations: int = 100,
):
    """The full distribution `q` closest to a generalist and its specialists (Hinton §5.2).

    Minimises `KL(p_g || q) + sum_{m active} KL(p_m || q_m)` over distributions `q` on all
    classes, where specialist `m` predicts its classes plus a dustbin and
    `q_m = (q on the classes of m, sum of q over the other classes)`. The objective is convex in
    `q` and is the negative log-likelihood of coarsened observations, so it is solved by the EM
    fixed point, which decreases it at every step (`q` starts at `p_g`):
    `q_c <- (p_g[c] + sum_m r_m[c]) / (1 + M)`, with `r_m[c] = p_m[c]` for a class of `m`,
    `r_m[c] = p_m[dustbin] * q_c / sum_{c' not in m} q_c'` otherwise, and `M` the number of
    active specialists of the example.

    Args:
        generalist_probs: `(batch, classes)` generalist distribution `p_g`.
        specialist_probs: one `(batch, len(class_subsets[m]) + 1)` distribution per specialist:
            its classes in the order of `class_subsets[m]`, then the dustbin.
        class_subsets: one list of class ids per specialist.
        active: optional `(specialists, batch)` 0/1 mask of the specialists used per example
            (default: all).
        iterations: number of EM steps.

    Returns:
        `(batch, classes)` float32 distribution `q`.

    Example:
        >>> q = combine_specialists(p_g, [p_animals], [[2, 3, 4, 5, 6, 7]])

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015, §5.2.
        `q = argmin_q KL(p_g || q) + sum_m KL(p_m || q_m)`.
    """
    p_g = ops.cast(generalist_probs, "float32")
    num_classes = p_g.shape[-1]
    batch = ops.shape(p_g)[0]
    if active is None:
        active = ops.ones((len(specialist_probs), batch), "float32")
    active = ops.cast(active, "float32")
    fixed = ops.zeros_like(p_g)  # responsibilities on each specialist's own classes
    outsides, dustbins = [], []
    for m, p_m in enumerate(specialist_probs):
        p_m = ops.cast(p_m, "float32")
        matrix = _scatter_matrix(class_subsets[m], num_classes)
        fixed = fixed + active[m][:, None] * ops.matmul(p_m, matrix)
        dustbins.append(active[m][:, None] * p_m[:, -1:])
        outsides.append(1.0 - matrix.sum(axis=0))
    denominator = 1.0 + ops.sum(active, axis=0)[:, None]
    q = p_g
    for _ in range(iterations):
        spread = ops.zeros_like(p_g)
        for outside_mask, dustbin in zip(outsides, dustbins):
            outside = outside_mask * q
            mass = ops.maximum(ops.sum(outside, axis=-1, keepdims=True), _EPSILON)
            spread = spread + dustbin * outside / mass
        q = (p_g + fixed + spread) / denominator
    return q


def _output_classes(model: keras.Model) -> int | None:
    try:
        return int(model.outputs[0].shape[-1])
    except (AttributeError, ValueError, IndexError, TypeError):
        return None


def _check_subsets(class_subsets, num_specialists: int) -> list[list[int]]:
    if not isinstance(class_subsets, (list, tuple)) or len(class_subsets) != num_specialists:
        raise ValueError(
            f"class_subsets must be a list with one class list per specialist "
            f"({num_specialists}), got {class_subsets!r}."
        )
    subsets = []
    for m, subset in enumerate(class_subsets):
        if not isinstance(subset, (list, tuple, np.ndarray)):
            raise TypeError(
                f"class_subsets[{m}] must be a list of class ids, got {class_subsets[m]!r}."
            )
        subset = [
            validation.non_negative_int(f"class_subsets[{m}][{j}]", c)
            for j, c in enumerate(subset)
        ]
        if not subset or len(set(subset)) != len(subset):
            raise ValueError(
                f"class_subsets[{m}] must be a non-empty list of distinct class ids, "
                f"got {class_subsets[m]!r}."
            )
        subsets.append(subset)
    return subsets


@keras.saving.register_keras_serializable(package="keras_kd")
class Specialists(keras.Model):
    """A generalist plus specialists, each on a class subset with a dustbin, as one teacher.

    Specialist `m` is a classifier over `len(class_subsets[m]) + 1` outputs: its classes in the
    order of `class_subsets[m]`, then the dustbin ("any other class"). For each example, the
    specialists whose subset meets the generalist's `top_k` most probable classes are active
    (Hinton §5.2; all of them when `top_k=None`), and the full-class distribution `q` minimising
    `KL(p_g || q) + sum_{active m} KL(p_m || q_m)` is found by EM (`combine_specialists`). The
    call returns `T * log(q)`: with every model softened at temperature `T`,
    `softmax(output / T) = q` exactly, so `T` must equal the soft-target loss temperature.
    All models are frozen and run with `training=False`.

    Args:
        generalist: a `keras.Model` over all classes (logits, or a final softmax undone).
        specialists: list of specialist `keras.Model`s.
        class_subsets: one list of class ids per specialist.
        top_k: a specialist is used for an example when its subset contains one of the
            generalist's `top_k` classes; `None` uses every specialist.
        temperature: `T > 0` at which all models' distributions are combined.
        iterations: EM steps (50-100 reach float32 precision on typical problems).
        name: model name.

    Example:
        >>> teacher = keras_kd.teachers.Specialists(
        ...     generalist, [spec_animals, spec_vehicles],
        ...     class_subsets=[[2, 3, 4, 5, 6, 7], [0, 1, 8, 9]], top_k=2, temperature=4.0)
        >>> keras_kd.Distiller(teacher, student,
        ...                    distillation_losses=keras_kd.SoftTargetDistillation(4.0))

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015, §5;
        Gao et al., "Knowledge Concentration: Learning 100K Object Classifiers in a Single CNN",
        2017 (specialists distilled into one student).
        `q = argmin_q KL(p_g || q) + sum_m KL(p_m || q_m)`, output `T * log q`.
    """

    def __init__(
        self,
        generalist: keras.Model,
        specialists: Sequence[keras.Model],
        class_subsets: Sequence[Sequence[int]],
        top_k: int | None = 1,
        temperature: float = 1.0,
        iterations: int = 100,
        name: str = "specialists",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if not isinstance(generalist, keras.Model):
            raise TypeError(f"generalist must be a keras.Model, got {type(generalist)!r}.")
        if not isinstance(specialists, (list, tuple)) or not specialists:
            raise ValueError("specialists must be a non-empty list of keras.Model.")
        for m, specialist in enumerate(specialists):
            if not isinstance(specialist, keras.Model):
                raise TypeError(
                    f"specialists[{m}] must be a keras.Model, got {type(specialist)!r}."
                )
        subsets = _check_subsets(class_subsets, len(specialists))
        num_classes = _output_classes(generalist)
        for m, subset in enumerate(subsets):
            if min(subset) < 0 or (num_classes is not None and max(subset) >= num_classes):
                raise ValueError(
                    f"class_subsets[{m}] = {subset} has ids outside [0, {num_classes})."
                )
        if top_k is not None:
            top_k = validation.positive_int(
                "top_k", top_k, hint="Pass None to use every specialist on every example."
            )
        temperature = validation.positive(
            "temperature", temperature, hint="Pass the soft-target loss temperature, e.g. 4.0."
        )
        iterations = validation.positive_int("iterations", iterations)
        self.generalist = generalist
        self.specialists = list(specialists)
        for model in (generalist, *self.specialists):
            model.trainable = False
        self.class_subsets = subsets
        self.top_k = top_k
        self.temperature = temperature
        self.iterations = iterations
        self._generalist = FeatureExtractor(generalist, (LOGITS,), "generalist")
        self._specialists = [FeatureExtractor(s, (LOGITS,), "specialist") for s in specialists]
        self.trainable = False

    def call(self, inputs, training=None):
        t = self.temperature
        g_logits = ops.cast(self._generalist.logits(inputs), "float32")
        num_classes = g_logits.shape[-1]
        p_g = ops.softmax(g_logits / t, axis=-1)
        specialist_probs = []
        for m, extractor in enumerate(self._specialists):
            logits = ops.cast(extractor.logits(inputs), "float32")
            if logits.shape[-1] != len(self.class_subsets[m]) + 1:
                raise ValueError(
                    f"specialists[{m}] has {logits.shape[-1]} outputs; it must have one per "
                    f"class of class_subsets[{m}] plus a dustbin "
                    f"({len(self.class_subsets[m]) + 1})."
                )
            specialist_probs.append(ops.softmax(logits / t, axis=-1))
        active = None
        if self.top_k is not None:
            membership = np.stack(
                [_scatter_matrix(s, num_classes).sum(axis=0) for s in self.class_subsets]
            )
            _, top = ops.top_k(p_g, k=min(self.top_k, num_classes))
            top_mask = ops.sum(ops.one_hot(top, num_classes), axis=1)  # (batch, classes)
            hits = ops.matmul(top_mask, ops.convert_to_tensor(membership.T))
            active = ops.transpose(ops.cast(hits > 0, "float32"))  # (specialists, batch)
        q = combine_specialists(p_g, specialist_probs, self.class_subsets, active, self.iterations)
        return t * ops.log(ops.maximum(q, _EPSILON))

    def compute_output_shape(self, input_shape):
        return self.generalist.compute_output_shape(input_shape)

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "generalist": keras.saving.serialize_keras_object(self.generalist),
            "specialists": [keras.saving.serialize_keras_object(s) for s in self.specialists],
            "class_subsets": [list(s) for s in self.class_subsets],
            "top_k": self.top_k,
            "temperature": self.temperature,
            "iterations": self.iterations,
        }

    @classmethod
    def from_config(cls, config: dict) -> Specialists:
        config = dict(config)
        config["generalist"] = keras.saving.deserialize_keras_object(config["generalist"])
        config["specialists"] = [
            keras.saving.deserialize_keras_object(s) for s in config["specialists"]
        ]
        return cls(**config)
