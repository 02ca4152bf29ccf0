"""Knowledge concentration (Gao, Guo, Li & Nevatia 2017): many specialist teachers, one student.

Each specialist is an expert on one *vertical*, a subset of the classes; the verticals
partition the label space. `VerticalSpecialists` presents them to the `Distiller` as one
teacher whose output holds, at every class, the logit of the specialist owning it.

What the paper does (arXiv 1711.07607v2; read through a detailed public review of the paper
that reproduces its equations, figures and Tables 1-5, as the arXiv text could not be
fetched here; table numbers as in that review), and what is implemented:

1. Multi-teacher single-student distillation. The paper's labels are hierarchical and
   multi-label, so specialists are trained with the sigmoid cross-entropy
   `L_t = -(1/N_b) sum_i sum_j [z_ij log s(x_ij) + (1 - z_ij) log(1 - s(x_ij))]`. For a training
   image, the teacher is selected by the vertical of its ground-truth label; its sigmoid outputs
   give soft targets `z*_ij`, set to 0 below its top K (K = 100) and on every class outside the
   selected vertical, and the student minimises the same sigmoid cross-entropy over all `N_c`
   classes with `z*` in place of `z`. Implemented exactly by
   `ConcentrationDistillation(targets="sigmoid", top_k=K)` (`vertical_sigmoid_distillation`,
   per example `sum_j BCE(z*_ij, s(x_ij))`), for single-label data (the vertical is the one of
   the integer label). The paper's student loss has no hard-label term: use
   `student_loss_weight=0` (or a binary label loss on one-hot labels). The default
   `targets="softmax"` is this library's single-label variant, not the paper's:
   `T^2 KL(softmax_V(t / T) || softmax_V(s / T))` over the classes of the label's vertical
   (`vertical_soft_target_kl`).
2. Self-paced learning "for different verticals" (Table 5). The student's
   logits of each vertical are L2-normalised and multiplied by a learnable scaling factor,
   `y_v = gamma_v x_v / |x_v|_2`, one `gamma_v` per vertical ("vertical level") or one per class
   ("node level"); `gamma` scales the gradients each vertical receives, i.e. its pace, and is
   learnt with the network. Initialisation `(mean, spread) = (sqrt(N_v), 1e-3)`, `N_v` the
   vertical's number of classes, trained at vertical level, was best (mpvap 37.9 % vs 32.9 %
   without and 32.8 % at class level; a fixed `sqrt(N_v)` or an initial 10 trained worse).
   Implemented by the student layer `SelfPacedScaling` (put it on the student's logits; the
   spread 1e-3 is used as the standard deviation of a normal initialiser).
   Not the paper's, kept as an option of `ConcentrationDistillation`: example-level hard
   self-paced weights (`self_paced_weights`, Kumar, Packer & Koller 2010) with one quantile
   threshold per teacher, raised by `SelfPacedSchedule` (with the default `pace=1.0` every
   weight is 1).
3. Structurally connected (SC) layers (Tables 2-3). Over a shared feature of
   size `s_1s`: (a) `FC(s_1s)-FC(s_2)`: a dense `s_2` layer then all `N` classes
   (`s_1s s_2 + s_2 N` weights); (b) `FC(s_1s)-SC(s_2)`: one `s_2`-unit hidden layer per vertical
   (`M s_1s s_2`), each connected to its vertical's classes only (`s_2 N`); (c)
   `SC(s_1i)-SC(s_2)`: the first layer split per vertical too; (d) `FC(s_1s)-SC(s_2, x)`: `s_g`
   of each vertical's `s_2` units shared by all verticals. On EFT (100K classes) (b) was best:
   FC4096-SC512 32.9 % mpvap (135M parameters) vs FC4096-FC512 31.5 % (98M) and SC512-SC512
   31.9 % (155M); sharing x = 128 / 256 / 384 / 512 units gave 32.8 / 32.4 / 31.4 / 31.5 %.
   `StructurallyConnected(units=s_2)` is the SC part of (b) (put a Dense `s_1s` layer before it
   for (b)); `StructurallyConnected(units=s_2 - x, shared_units=x)` is (d); (c) is not
   provided. The hidden units use ReLU (the paper's figure does not name the activation).

Published results (EFT, mean per-vertical average precision, Tables 1 and 5): FC4096-FC512 27.7 %
without and 31.5 % with distillation, SC512-SC512 27.6 / 31.9 %; with vertical-level
self-paced learning 37.9 %.
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
        a Single CNN", 2017 (multi-teacher single-student distillation; this softmax form is
        the library's single-label variant, the paper's is `vertical_sigmoid_distillation`).
        `T^2 sum_{c in V} p_c log(p_c / q_c)`.
    """
    t = ops.cast(temperature, "float32")
    z_t = ops.cast(teacher_logits, "float32") / t
    z_s = ops.cast(student_logits, "float32") / t
    mask = _label_vertical_mask(labels, vertical_of_class, z_t)
    very_negative = ops.cast(-1e9, "float32")
    log_p = ops.log_softmax(ops.where(mask, z_t, very_negative), axis=-1)
    log_q = ops.log_softmax(ops.where(mask, z_s, very_negative), axis=-1)
    p = ops.where(mask, ops.exp(log_p), 0.0)
    kl = ops.sum(ops.where(mask, p * (log_p - log_q), 0.0), axis=-1)
    return t * t * kl


def vertical_sigmoid_targets(teacher_logits, labels, vertical_of_class, top_k=None,
                             temperature=1.0):
    """The paper's soft targets: the teacher's sigmoids on its vertical's top K, 0 elsewhere.

    Args:
        teacher_logits: `(batch, classes)` (a `VerticalSpecialists` output).
        labels: `(batch,)` integer classes (or one-hot `(batch, classes)`: arg-max).
        vertical_of_class: `(classes,)` vertical index of each class.
        top_k: keep the `top_k` largest teacher logits of the vertical (ties at the K-th value
            kept); `None` keeps the whole vertical. The paper uses K = 100.
        temperature: `T > 0` dividing the logits (the paper: 1).

    Returns:
        `(batch, classes)` float32 `z*`: `sigmoid(t_j / T)` for `j` in the label's vertical and
        its top K, else 0.

    Reference:
        Gao et al. 2017: soft targets of the teacher selected by the label's vertical, set to 0
        below the top K and outside the vertical.
    """
    z_t = ops.cast(teacher_logits, "float32") / ops.cast(temperature, "float32")
    mask = _label_vertical_mask(labels, vertical_of_class, z_t)
    if top_k is not None:
        very_negative = ops.cast(-3.0e38, "float32")
        inside = ops.where(mask, z_t, very_negative)
        k = min(int(top_k), int(z_t.shape[-1]))
        kth = ops.min(ops.top_k(inside, k)[0], axis=-1, keepdims=True)
        mask = ops.logical_and(mask, inside >= kth)
    return ops.where(mask, ops.sigmoid(z_t), 0.0)


def vertical_sigmoid_distillation(teacher_logits, student_logits, labels, vertical_of_class,
                                  top_k=None, temperature=1.0):
    """Per-example sigmoid cross-entropy of the student against `vertical_sigmoid_targets`.

    Args:
        teacher_logits: `(batch, classes)`.
        student_logits: `(batch, classes)`.
        labels: `(batch,)` integer classes (or one-hot).
        vertical_of_class: `(classes,)` vertical index of each class.
        top_k: see `vertical_sigmoid_targets` (the paper: 100).
        temperature: `T > 0` dividing both models' logits (the paper: 1).

    Returns:
        `(batch,)` float32 `-sum_j [z*_j log s(x_j / T) + (1 - z*_j) log(1 - s(x_j / T))]`
        over all classes `j`.

    Example:
        >>> vertical_sigmoid_distillation(t, s, y, vertical_of_classes(subsets, 10), top_k=100)

    Reference:
        Gao, Guo, Li & Nevatia, "Knowledge Concentration: Learning 100K Object Classifiers in
        a Single CNN", 2017: `L_s = -(1/N_b) sum_i sum_j (log(s(x_ij)) z*_ij +
        log(1 - s(x_ij)) (1 - z*_ij))`.
    """
    targets = vertical_sigmoid_targets(teacher_logits, labels, vertical_of_class, top_k,
                                       temperature)
    z_s = ops.cast(student_logits, "float32") / ops.cast(temperature, "float32")
    # log s(x) = -softplus(-x), log(1 - s(x)) = -softplus(x): stable for any logit.
    per_class = targets * ops.softplus(-z_s) + (1.0 - targets) * ops.softplus(z_s)
    return ops.sum(per_class, axis=-1)


def _label_vertical_mask(labels, vertical_of_class, like):
    """`(batch, classes)` bool: the classes of each example's labelled vertical."""
    if len(labels.shape) == len(like.shape):
        labels = ops.argmax(labels, axis=-1)
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    owner = ops.convert_to_tensor(np.asarray(vertical_of_class, np.int32))
    vertical = ops.take(owner, labels)
    return ops.equal(owner[None, :], vertical[:, None])


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
        (`v_i = 1[l_i < lambda]`), with one threshold per teacher. Not Gao et al.'s
        mechanism, which is `SelfPacedScaling` (module docstring).
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
    """Knowledge concentration's distillation loss: each example taught by its vertical's teacher.

    For each example, `w * d` with `V` the vertical of its label and
    `d = vertical_sigmoid_distillation(t, s, y)` (`targets="sigmoid"`, the paper's: sigmoid
    cross-entropy over all classes against the teacher's sigmoids on `V`'s top K, 0 elsewhere)
    or `d = T^2 KL(softmax_V(t / T) || softmax_V(s / T))` (`targets="softmax"`, the default:
    this library's single-label variant, `vertical_soft_target_kl`). `w` is an example-level
    self-paced weight among the batch's examples of the same vertical (`self_paced_weights`,
    under `stop_gradient`; not the paper's self-paced learning, which is the student layer
    `SelfPacedScaling`); with the default `pace=1.0` every `w` is 1. Use it with a
    `VerticalSpecialists` teacher in the `Distiller`; it needs the labels.

    Args:
        class_subsets: the verticals (a partition of the classes).
        temperature: `T > 0`, a non-trainable variable (schedulable); the paper's sigmoid
            targets use none (1).
        self_paced: apply the example-level self-paced weights (`False`: every weight is 1).
        pace: initial pace in (0, 1], one number or one per vertical; the non-trainable
            variable `loss.pace` that `SelfPacedSchedule` raises.
        targets: `"softmax"` (default) or `"sigmoid"` (the paper's; specialists trained with
            a sigmoid cross-entropy, student read as independent sigmoid units: compile a
            binary label loss on one-hot labels, or `student_loss_weight=0` as in the paper).
        top_k: with `targets="sigmoid"`, keep the teacher's `top_k` largest logits of the
            vertical (the paper: 100); `None` keeps the whole vertical.
        name: log key (default `concentration_distillation`).

    Raises:
        TypeError, ValueError: subsets that are not a partition, a pace outside (0, 1], a bad
            temperature, `targets` or `top_k`; at call time, missing labels.

    Example:
        >>> loss = ConcentrationDistillation(subsets, temperature=4.0, pace=0.5)
        >>> distiller = keras_kd.Distiller(VerticalSpecialists(specs, subsets), student, loss,
        ...                                student_loss_weight=0.5)
        >>> distiller.fit(ds, epochs=10, callbacks=[SelfPacedSchedule(loss, epochs=5)])

    Example (the paper's formulation):
        >>> loss = ConcentrationDistillation(subsets, targets="sigmoid", top_k=100,
        ...                                  self_paced=False)
        >>> logits = SelfPacedScaling(subsets)(keras.layers.Dense(num_classes)(features))

    Reference:
        Gao, Guo, Li & Nevatia, "Knowledge Concentration: Learning 100K Object Classifiers in
        a Single CNN", 2017 (formulation in the module docstring).
        `v_i * T^2 KL(softmax_V(t/T) || softmax_V(s/T))` or `v_i * sum_j BCE(z*_ij, s(x_ij))`.
    """

    def __init__(self, class_subsets: Sequence[Sequence[int]], temperature: float = 1.0,
                 self_paced: bool = True, pace=1.0, targets: str = "softmax", top_k=None,
                 name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        subsets, num_classes = _check_partition(class_subsets, None, None)
        self.class_subsets = subsets
        self.num_classes = num_classes
        self.self_paced = validation.one_of("self_paced", self_paced, (False, True))
        self.targets = validation.one_of("targets", targets, ("softmax", "sigmoid"))
        if top_k is not None:
            if self.targets != "sigmoid":
                raise ValueError("top_k applies to targets='sigmoid' (the paper's top-K soft "
                                 "targets); pass targets='sigmoid' or top_k=None.")
            top_k = validation.positive_int("top_k", top_k, hint="The paper keeps 100.")
        self.top_k = top_k
        paces = _paces(pace, len(subsets))
        self.temperature = make_temperature(self, temperature)
        self.pace = self.add_weight(shape=(len(subsets),),
                                    initializer=keras.initializers.Constant(paces),
                                    trainable=False, dtype="float32", name="pace")
        self._owner = vertical_of_classes(subsets, num_classes)

    def output_family(self) -> str:
        return "bernoulli" if self.targets == "sigmoid" else "categorical"

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
        if self.targets == "sigmoid":
            values = vertical_sigmoid_distillation(t, s, labels, self._owner, self.top_k,
                                                   self.temperature)
        else:
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
            targets=self.targets,
            top_k=self.top_k,
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
    `min(1, start_k + (1 - start_k) * e / epochs_k)`: each teacher at its own speed. This drives
    the example-level weights (`self_paced_weights`), not the paper's learnt per-vertical
    scaling (`SelfPacedScaling`), which needs no schedule.

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
class SelfPacedScaling(keras.layers.Layer):
    """Gao et al.'s self-paced learning: learnt scales of each vertical's L2-normalised logits.

    `y_v = gamma_v * x_v / |x_v|_2`, where `x_v` are the input logits of vertical `v`'s classes
    and `gamma_v` a trainable scalar per vertical (`level="vertical"`, the paper's best) or a
    trainable vector, one per class (`level="class"`). Larger `gamma_v` give vertical `v`
    larger gradients: the student learns each teacher's vertical at its own, learnt pace. Put
    it on the student's logits (the last layer).

    Args:
        class_subsets: the verticals (a partition of the classes).
        level: `"vertical"` or `"class"`.
        initial: initial scale: `"sqrt"` (`sqrt(N_v)`, `N_v` the vertical's class count; the
            paper's best) or a positive number (the paper also tried 10).
        spread: standard deviation of the normal initialiser around `initial` (the paper's
            "1e-3").
        epsilon: added to `|x_v|^2` under the square root.

    Example:
        >>> logits = SelfPacedScaling(subsets)(keras.layers.Dense(num_classes)(features))

    Reference:
        Gao, Guo, Li & Nevatia, "Knowledge Concentration: Learning 100K Object Classifiers in
        a Single CNN", 2017 (self-paced learning for different verticals; vertical level,
        initialised at `(sqrt(N_v), 1e-3)`, 37.9 % mpvap on EFT vs 32.9 % without).
        `y_v = gamma_v x_v / |x_v|_2`.
    """

    def __init__(self, class_subsets: Sequence[Sequence[int]], level: str = "vertical",
                 initial="sqrt", spread: float = 1e-3, epsilon: float = 1e-12, **kwargs):
        super().__init__(**kwargs)
        subsets, num_classes = _check_partition(class_subsets, None, None)
        self.class_subsets = subsets
        self.num_classes = num_classes
        self.level = validation.one_of("level", level, ("vertical", "class"))
        if isinstance(initial, str):
            self.initial = validation.one_of("initial", initial, ("sqrt",),
                                             hint="Or a positive number.")
        else:
            self.initial = validation.positive("initial", initial)
        self.spread = validation.non_negative("spread", spread)
        self.epsilon = validation.positive("epsilon", epsilon)
        self._owner = vertical_of_classes(subsets, num_classes)
        sizes = np.asarray([len(v) for v in subsets], np.float32)
        self._centres = (np.sqrt(sizes) if self.initial == "sqrt"
                         else np.full(len(subsets), self.initial, np.float32))

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.num_classes:
            raise ValueError(f"SelfPacedScaling expects {self.num_classes} logits (the classes "
                             f"of class_subsets), got {input_shape[-1]}.")
        centres = (self._centres if self.level == "vertical"
                   else self._centres[self._owner])
        self.gamma = self.add_weight(shape=centres.shape, name="gamma", initializer="zeros")
        noise = keras.random.normal(centres.shape, stddev=self.spread) if self.spread else 0.0
        self.gamma.assign(ops.convert_to_tensor(centres, "float32") + noise)
        self.built = True

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        owner = ops.convert_to_tensor(self._owner)
        onehot = ops.one_hot(owner, len(self.class_subsets))  # (classes, verticals)
        energy = ops.matmul(ops.square(x), onehot)  # (batch, verticals): |x_v|^2
        norm = ops.take(ops.sqrt(energy + self.epsilon), owner, axis=-1)
        gamma = self.gamma if self.level == "class" else ops.take(self.gamma, owner)
        return gamma * x / norm

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "class_subsets": [list(s) for s in self.class_subsets],
                "level": self.level, "initial": self.initial, "spread": self.spread,
                "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="keras_kd")
class StructurallyConnected(keras.layers.Layer):
    """Structurally connected (SC) layers: one hidden branch per vertical, block-connected.

    `features -> [relu(Dense(u_k)) -> Dense(|V_k|)]_k -> logits`, the branches' outputs put at
    their classes' positions: block-diagonal connections from the hidden units to the classes.
    With `shared_units = x > 0`, a shared `relu(Dense(x))` of the same features joins every
    branch: vertical `k`'s classes read `[shared, own_k]` (`x + u_k` units).

    In the paper's notation over a shared feature `s_1s`: `SC(s_2)` is `units=s_2` (variant
    (b) `FC(s_1s)-SC(s_2)` when a Dense `s_1s` layer comes before it) and `SC(s_2, x)` is
    `units=s_2 - x, shared_units=x` (variant (d)). Parameters: `d x + x` (shared) plus
    `sum_k (d u_k + u_k) + sum_k ((x + u_k) |V_k| + |V_k|)` for `d` input features.

    Args:
        class_subsets: the verticals (a partition of the classes).
        units: own hidden units per branch, one number or one per vertical.
        shared_units: hidden units shared by all branches (0: none).

    Example:
        >>> logits = StructurallyConnected(subsets, units=32)(features)

    Reference:
        Gao et al. 2017, "structurally connected layers" (module docstring; ReLU hidden units
        assumed).
    """

    def __init__(self, class_subsets: Sequence[Sequence[int]], units=32, shared_units=0,
                 **kwargs):
        super().__init__(**kwargs)
        subsets, num_classes = _check_partition(class_subsets, None, None)
        widths = list(units) if isinstance(units, (list, tuple)) else [units] * len(subsets)
        if len(widths) != len(subsets):
            raise ValueError(f"units must be one number or one per vertical ({len(subsets)}).")
        self.units = [validation.positive_int("units", u) for u in widths]
        self.shared_units = validation.non_negative_int("shared_units", shared_units)
        self.class_subsets = subsets
        self.num_classes = num_classes
        self.hidden = [keras.layers.Dense(u, activation="relu", name=f"vertical{k}_hidden")
                       for k, u in enumerate(self.units)]
        self.shared = (keras.layers.Dense(self.shared_units, activation="relu",
                                          name="shared_hidden") if self.shared_units else None)
        self.heads = [keras.layers.Dense(len(s), name=f"vertical{k}_logits")
                      for k, s in enumerate(subsets)]
        order = [c for subset in subsets for c in subset]
        self._gather = np.argsort(np.asarray(order)).astype(np.int32)

    def build(self, input_shape):
        if self.shared is not None:
            self.shared.build(input_shape)
        for hidden, head, units in zip(self.hidden, self.heads, self.units):
            hidden.build(input_shape)
            head.build((*input_shape[:-1], units + self.shared_units))
        self.built = True

    def call(self, inputs):
        shared = self.shared(inputs) if self.shared is not None else None
        parts = []
        for hidden, head in zip(self.hidden, self.heads):
            h = hidden(inputs)
            parts.append(head(h if shared is None else ops.concatenate([shared, h], axis=-1)))
        return ops.take(ops.concatenate(parts, axis=-1), ops.convert_to_tensor(self._gather),
                        axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.num_classes)

    def get_config(self) -> dict:
        return {**super().get_config(), "class_subsets": [list(s) for s in self.class_subsets],
                "units": list(self.units), "shared_units": self.shared_units}


__all__ = [
    "ConcentrationDistillation",
    "SelfPacedScaling",
    "SelfPacedSchedule",
    "StructurallyConnected",
    "VerticalSpecialists",
    "self_paced_weights",
    "vertical_of_classes",
    "vertical_sigmoid_distillation",
    "vertical_sigmoid_targets",
    "vertical_soft_target_kl",
]
