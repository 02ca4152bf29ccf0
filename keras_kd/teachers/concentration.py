"""Knowledge concentration (Gao et al. 2017): many specialist teachers, one student.

Each specialist is an expert on one *vertical*, a subset of the classes; the verticals
partition the label space. `VerticalSpecialists` presents them to the `Distiller` as one
teacher whose output holds, at every class, the logit of the specialist owning it.
`ConcentrationDistillation` is the distillation loss: each example is taught by the specialist
of its labelled class's vertical, over that vertical's classes only, with self-paced
per-example weights (`self_paced_weights`) whose pace `SelfPacedSchedule` raises over training.
`StructurallyConnected` is a student head with one branch per vertical.

What is implemented, exactly (the paper's text could not be consulted offline; its abstract
names the three parts, and the formulation below is ours, stated so it can be checked):

1. Multi-teacher single-student distillation. For an example of class `y` in vertical `V`,
   `KD = T^2 KL(softmax_V(t / T) || softmax_V(s / T))`, where `softmax_V` is the softmax over
   the classes of `V` only, `t` the logits of `V`'s specialist and `s` the student's. The
   `Distiller` adds the hard-label loss: `alpha * CE(y, s) + (1 - alpha) * mean(w * KD)`.
2. Self-paced learning, per teacher and per example: among the examples of a batch taught by
   specialist `k`, those with the smallest `KD` are learnt first. With pace `q_k` in (0, 1],
   the `ceil(q_k * n_k)` examples of lowest loss get weight 1 and the others 0 (ties at the
   threshold are kept); `n_k` counts specialist `k`'s examples in the batch. Each specialist
   has its own threshold (its own loss scale) and may have its own pace; `SelfPacedSchedule`
   raises the paces linearly to 1 (all examples) over the epochs given per specialist. This is
   hard self-paced learning (Kumar, Packer & Koller 2010) with a quantile threshold per
   teacher.
3. Structurally connected layers: `StructurallyConnected` maps shared features to one hidden
   branch per vertical and each branch to its vertical's logits only (block-diagonal
   connections), adding capacity per vertical with `sum_k (d * u_k + u_k * |V_k|)`
   parameters instead of a dense `d * sum(u_k) + sum(u_k) * C`.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from keras_kd import validation
from keras_kd.features import FeatureExtractor
from keras_kd.losses.base import LOGITS, DistillationLoss, make_temperature
from keras_kd.teachers.specialists import _check_subsets, _output_classes


def _check_partition(class_subsets, num_specialists: int | None, num_classes: int | None):
    count = len(class_subsets) if isinstance(class_subsets, (list, tuple)) else 0
    subsets = _check_subsets(class_subsets, num_specialists if num_specialists else count)
    classes = sorted(c for s in subsets for c in s)
    total = num_classes if num_classes is not None else (max(classes) + 1 if classes else 0)
    if classes != list(range(total)):
        seen = {}
        for k, subset in enumerate(subsets):
            for c in subset:
                if c in seen:
                    raise ValueError(f"class {c} is in class_subsets[{seen[c]}] and "
                                     f"class_subsets[{k}]; the verticals must partition the "
                                     "classes (each class in exactly one).")
                seen[c] = k
        missing = sorted(set(range(total)) - set(seen))
        extra = sorted(set(seen) - set(range(total)))
        raise ValueError(f"class_subsets must partition the classes 0..{total - 1}; missing "
                         f"{missing}, outside {extra}.")
    return subsets, total


def vertical_of_classes(class_subsets: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """`(classes,)` int32: the index of the vertical each class belongs to."""
    owner = np.full((num_classes,), -1, np.int32)
    for k, subset in enumerate(class_subsets):
        owner[list(subset)] = k
    return owner


def vertical_soft_target_kl(teacher_logits, student_logits, labels, vertical_of_class,
                            temperature=1.0):
    """Per-example `T^2 KL` over the classes of the labelled class's vertical only.

    Args:
        teacher_logits: `(batch, classes)`: at each class, the logit of its vertical's
            specialist (a `VerticalSpecialists` output).
        student_logits: `(batch, classes)`.
        labels: `(batch,)` integer classes (or one-hot `(batch, classes)`: arg-max).
        vertical_of_class: `(classes,)` vertical index of each class.
        temperature: `T > 0`.

    Returns:
        `(batch,)` float32 `T^2 KL(softmax_V(t/T) || softmax_V(s/T))`, `V` the vertical of
        the label.

    Example:
        >>> vertical_soft_target_kl(t, s, y, vertical_of_classes([[0, 2], [1, 3]], 4), 2.0)

    Reference:
        Gao, Guo, Li & Nevatia, "Knowledge Concentration: Learning 100K Object Classifiers in
        a Single CNN", 2017 (multi-teacher single-student distillation; our formulation, see
        the module docstring). `T^2 sum_{c in V} p_c log(p_c / q_c)`.
    """
    t = ops.cast(temperature, "float32")
    z_t = ops.cast(teacher_logits, "float32") / t
    z_s = ops.cast(student_logits, "float32") / t
    if len(labels.shape) == len(z_t.shape):
        labels = ops.argmax(labels, axis=-1)
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    owner = ops.convert_to_tensor(np.asarray(vertical_of_class, np.int32))
    vertical = ops.take(owner, labels)
    mask = ops.equal(owner[None, :], vertical[:, None])
    very_negative = ops.cast(-1e9, "float32")
    log_p = ops.log_softmax(ops.where(mask, z_t, very_negative), axis=-1)
    log_q = ops.log_softmax(ops.where(mask, z_s, very_negative), axis=-1)
    p = ops.where(mask, ops.exp(log_p), 0.0)
    kl = ops.sum(ops.where(mask, p * (log_p - log_q), 0.0), axis=-1)
    return t * t * kl


def self_paced_weights(losses, groups, num_groups: int, pace):
    """Hard self-paced weights with a quantile threshold per group (teacher).

    Args:
        losses: `(batch,)` per-example losses.
        groups: `(batch,)` integer group (teacher) of each example, in `[0, num_groups)`.
        num_groups: number of groups.
        pace: a number in (0, 1] or one per group: the share of each group's examples kept.

    Returns:
        `(batch,)` float32 weights in {0, 1}: example `i` of group `k` gets 1 when
        `losses[i] <= lambda_k`, `lambda_k` the `ceil(pace_k * n_k)`-th smallest loss of
        group `k` in the batch (`n_k` its examples).

    Example:
        >>> self_paced_weights(kd, vertical, 3, 0.5)   # the easier half of each teacher's

    Reference:
        Kumar, Packer & Koller, "Self-Paced Learning for Latent Variable Models", NIPS 2010
        (`v_i = 1[l_i < lambda]`), with one threshold per teacher as in Gao et al. 2017's
        "learning from different teachers at different paces".
    """
    losses = ops.cast(losses, "float32")
    groups = ops.reshape(ops.cast(groups, "int32"), (-1,))
    pace = ops.cast(pace, "float32")
    if len(pace.shape) == 0:
        pace = ops.ones((num_groups,), "float32") * pace
    weights = ops.zeros_like(losses)
    big = ops.cast(3.0e38, "float32")
    for k in range(num_groups):
        member = ops.equal(groups, k)
        n_k = ops.sum(ops.cast(member, "float32"))
        keep = ops.maximum(ops.ceil(pace[k] * n_k), 1.0)
        ranked = ops.sort(ops.where(member, losses, big))
        index = ops.cast(ops.minimum(keep, ops.maximum(n_k, 1.0)) - 1.0, "int32")
        threshold = ops.take(ranked, index)
        selected = ops.logical_and(member, losses <= threshold)
        weights = ops.where(selected, 1.0, weights)
    return weights


@keras.saving.register_keras_serializable(package="keras_kd")
class VerticalSpecialists(keras.Model):
    """Specialists on disjoint class subsets (verticals) presented as one full-class teacher.

    `teacher(x)` is `(batch, classes)`: at each class `c`, the logit of the specialist whose
    subset holds `c` (its output for `c`). Only the softmax *within* a vertical is meaningful;
    `ConcentrationDistillation` reads it that way. All specialists are frozen and run with
    `training=False`; each runs once per batch.

    Args:
        specialists: one `keras.Model` per vertical. Specialist `k` outputs one logit per class
            of `class_subsets[k]`, in that order, optionally followed by a dustbin logit
            ("any other class"), which is dropped.
        class_subsets: the verticals, a partition of `0..C-1`.
        name: model name.

    Raises:
        TypeError, ValueError: subsets that are not a partition, specialists with the wrong
            number of outputs.

    Example:
        >>> teacher = VerticalSpecialists([tops, shoes, others],
        ...                               [[0, 2, 3, 4, 6], [5, 7, 9], [1, 8]])

    Reference:
        Gao et al., "Knowledge Concentration: Learning 100K Object Classifiers in a Single
        CNN", 2017.
    """

    def __init__(self, specialists: Sequence[keras.Model],
                 class_subsets: Sequence[Sequence[int]], name: str = "vertical_specialists",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        if not isinstance(specialists, (list, tuple)) or not specialists:
            raise ValueError("specialists must be a non-empty list of keras.Model.")
        for k, specialist in enumerate(specialists):
            if not isinstance(specialist, keras.Model):
                raise TypeError(f"specialists[{k}] must be a keras.Model, got "
                                f"{type(specialist)!r}.")
        subsets, num_classes = _check_partition(class_subsets, len(specialists), None)
        self._drop_dustbin = []
        for k, (specialist, subset) in enumerate(zip(specialists, subsets)):
            units = _output_classes(specialist)
            if units not in (None, len(subset), len(subset) + 1):
                raise ValueError(f"specialists[{k}] has {units} outputs; it must have one per "
                                 f"class of class_subsets[{k}] ({len(subset)}), optionally "
                                 "plus a dustbin.")
            self._drop_dustbin.append(units == len(subset) + 1)
        self.specialists = list(specialists)
        for specialist in self.specialists:
            specialist.trainable = False
        self.class_subsets = subsets
        self.num_classes = num_classes
        order = [c for subset in subsets for c in subset]
        self._gather = np.argsort(np.asarray(order)).astype(np.int32)
        self._extractors = [FeatureExtractor(s, (LOGITS,), "specialist") for s in specialists]
        self.trainable = False

    def call(self, inputs, training=None):
        parts = []
        for subset, extractor, drop in zip(self.class_subsets, self._extractors,
                                           self._drop_dustbin):
            logits = ops.cast(extractor.logits(inputs), "float32")
            parts.append(logits[:, :len(subset)] if drop else logits)
        joined = ops.concatenate(parts, axis=-1)
        return ops.take(joined, ops.convert_to_tensor(self._gather), axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "specialists": [keras.saving.serialize_keras_object(s) for s in self.specialists],
            "class_subsets": [list(s) for s in self.class_subsets],
        }

    @classmethod
    def from_config(cls, config: dict) -> VerticalSpecialists:
        config = dict(config)
        config["specialists"] = [keras.saving.deserialize_keras_object(s)
                                 for s in config["specialists"]]
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_kd")
class ConcentrationDistillation(DistillationLoss):
    """Knowledge concentration's distillation loss: vertical KD with self-paced weights.

    For each example, `w * T^2 KL(softmax_V(t / T) || softmax_V(s / T))` with `V` the vertical
    of its label (`vertical_soft_target_kl`) and `w` its self-paced weight among the batch's
    examples of the same vertical (`self_paced_weights`, weights under `stop_gradient`). Use it
    with a `VerticalSpecialists` teacher in the `Distiller`; it needs the labels.

    Args:
        class_subsets: the verticals (a partition of the classes).
        temperature: `T > 0`, a non-trainable variable (schedulable).
        self_paced: apply the self-paced weights (`False`: every weight is 1).
        pace: initial pace in (0, 1], one number or one per vertical; the non-trainable
            variable `loss.pace` that `SelfPacedSchedule` raises.
        name: log key (default `concentration_distillation`).

    Raises:
        TypeError, ValueError: subsets that are not a partition, a pace outside (0, 1], a bad
            temperature; at call time, missing labels.

    Example:
        >>> loss = ConcentrationDistillation(subsets, temperature=4.0, pace=0.5)
        >>> distiller = keras_kd.Distiller(VerticalSpecialists(specs, subsets), student, loss,
        ...                                student_loss_weight=0.5)
        >>> distiller.fit(ds, epochs=10, callbacks=[SelfPacedSchedule(loss, epochs=5)])

    Reference:
        Gao, Guo, Li & Nevatia, "Knowledge Concentration: Learning 100K Object Classifiers in
        a Single CNN", 2017 (formulation in the module docstring).
        `v_i * T^2 KL(softmax_V(t/T) || softmax_V(s/T))`.
    """

    def __init__(self, class_subsets: Sequence[Sequence[int]], temperature: float = 1.0,
                 self_paced: bool = True, pace=1.0, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        subsets, num_classes = _check_partition(class_subsets, None, None)
        self.class_subsets = subsets
        self.num_classes = num_classes
        self.self_paced = validation.one_of("self_paced", self_paced, (False, True))
        paces = _paces(pace, len(subsets))
        self.temperature = make_temperature(self, temperature)
        self.pace = self.add_weight(shape=(len(subsets),),
                                    initializer=keras.initializers.Constant(paces),
                                    trainable=False, dtype="float32", name="pace")
        self._owner = vertical_of_classes(subsets, num_classes)

    def output_family(self) -> str:
        return "categorical"

    def needs_labels(self) -> bool:
        return True

    def temperature_variable(self):
        return self.temperature

    def call(self, teacher_features, student_features, labels=None):
        if labels is None:
            raise ValueError("ConcentrationDistillation needs the labels (the vertical of each "
                             "example's class): the dataset must yield (x, y).")
        t, s = teacher_features[0], student_features[0]
        if t.shape[-1] is not None and t.shape[-1] != self.num_classes:
            raise ValueError(f"The teacher has {t.shape[-1]} classes but class_subsets cover "
                             f"{self.num_classes}.")
        values = vertical_soft_target_kl(t, s, labels, self._owner, self.temperature)
        if not self.self_paced:
            return values
        if len(labels.shape) == len(t.shape):
            labels = ops.argmax(labels, axis=-1)
        groups = ops.take(ops.convert_to_tensor(self._owner),
                          ops.reshape(ops.cast(labels, "int32"), (-1,)))
        weights = self_paced_weights(ops.stop_gradient(values), groups, len(self.class_subsets),
                                     self.pace)
        return ops.stop_gradient(weights) * values

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            class_subsets=[list(s) for s in self.class_subsets],
            temperature=float(ops.convert_to_numpy(self.temperature)),
            self_paced=self.self_paced,
            pace=[float(v) for v in ops.convert_to_numpy(self.pace)],
        )
        return config


def _paces(pace, count: int) -> list[float]:
    many = isinstance(pace, (list, tuple, np.ndarray))
    values = list(pace) if many else [pace] * count
    if len(values) != count:
        raise ValueError(f"pace must be one number or one per vertical ({count}), got "
                         f"{len(values)} values.")
    out = []
    for i, v in enumerate(values):
        v = validation.unit_interval(f"pace[{i}]" if many else "pace", v,
                                     hint="It is the share of each teacher's examples learnt.")
        if v == 0.0:
            raise ValueError("pace must be > 0 (0 would learn from no example); e.g. 0.5.")
        out.append(v)
    return out


class SelfPacedSchedule(keras.callbacks.Callback):
    """Raises a `ConcentrationDistillation`'s paces linearly to 1 (all examples).

    At the start of epoch `e` (from 0), vertical `k`'s pace is
    `min(1, start_k + (1 - start_k) * e / epochs_k)`: each teacher at its own speed.

    Args:
        loss: the `ConcentrationDistillation`.
        epochs: epochs to reach pace 1, one number or one per vertical (> 0).
        start: pace at epoch 0, one number or one per vertical, in (0, 1].

    Example:
        >>> SelfPacedSchedule(loss, epochs=[2, 4, 4], start=0.5)
    """

    def __init__(self, loss: ConcentrationDistillation, epochs=5, start=0.5):
        super().__init__()
        if not isinstance(loss, ConcentrationDistillation):
            raise TypeError(f"loss must be a ConcentrationDistillation, got {type(loss)!r}.")
        count = len(loss.class_subsets)
        spans = list(epochs) if isinstance(epochs, (list, tuple)) else [epochs] * count
        if len(spans) != count:
            raise ValueError(f"epochs must be one number or one per vertical ({count}).")
        self.epochs = [validation.positive("epochs", e) for e in spans]
        self.start = _paces(start, count)
        self.loss = loss

    def paces(self, epoch: int) -> list[float]:
        return [min(1.0, s + (1.0 - s) * epoch / e) for s, e in zip(self.start, self.epochs)]

    def on_epoch_begin(self, epoch, logs=None):
        self.loss.pace.assign(np.asarray(self.paces(epoch), np.float32))


@keras.saving.register_keras_serializable(package="keras_kd")
class StructurallyConnected(keras.layers.Layer):
    """A head with one hidden branch per vertical, each connected to its vertical's classes.

    `features -> [relu(Dense(u_k)) -> Dense(|V_k|)]_k -> logits`, the branches' outputs put at
    their classes' positions: block-diagonal connections from the hidden units to the classes.

    Args:
        class_subsets: the verticals (a partition of the classes).
        units: hidden units per branch, one number or one per vertical.

    Example:
        >>> logits = StructurallyConnected(subsets, units=32)(features)

    Reference:
        Gao et al. 2017, "structurally connected layers" (our formulation: per-vertical
        branches; see the module docstring).
    """

    def __init__(self, class_subsets: Sequence[Sequence[int]], units=32, **kwargs):
        super().__init__(**kwargs)
        subsets, num_classes = _check_partition(class_subsets, None, None)
        widths = list(units) if isinstance(units, (list, tuple)) else [units] * len(subsets)
        if len(widths) != len(subsets):
            raise ValueError(f"units must be one number or one per vertical ({len(subsets)}).")
        self.units = [validation.positive_int("units", u) for u in widths]
        self.class_subsets = subsets
        self.num_classes = num_classes
        self.hidden = [keras.layers.Dense(u, activation="relu", name=f"vertical{k}_hidden")
                       for k, u in enumerate(self.units)]
        self.heads = [keras.layers.Dense(len(s), name=f"vertical{k}_logits")
                      for k, s in enumerate(subsets)]
        order = [c for subset in subsets for c in subset]
        self._gather = np.argsort(np.asarray(order)).astype(np.int32)

    def build(self, input_shape):
        for hidden, head, units in zip(self.hidden, self.heads, self.units):
            hidden.build(input_shape)
            head.build((*input_shape[:-1], units))
        self.built = True

    def call(self, inputs):
        parts = [head(hidden(inputs)) for hidden, head in zip(self.hidden, self.heads)]
        return ops.take(ops.concatenate(parts, axis=-1), ops.convert_to_tensor(self._gather),
                        axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.num_classes)

    def get_config(self) -> dict:
        return {**super().get_config(), "class_subsets": [list(s) for s in self.class_subsets],
                "units": list(self.units)}


__all__ = [
    "ConcentrationDistillation",
    "SelfPacedSchedule",
    "StructurallyConnected",
    "VerticalSpecialists",
    "self_paced_weights",
    "vertical_of_classes",
    "vertical_soft_target_kl",
]
