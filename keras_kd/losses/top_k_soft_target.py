"""Soft targets from the teacher's top-k logits plus one rest bucket (caches for many classes)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import keras

from keras_kd import validation
from keras_kd.losses.base import LOGITS, DistillationLoss, Tap
from keras_kd.losses.functional import top_k_soft_target_kl, top_k_teacher_targets

TOP_K_PARTS = ("values", "indices", "rest_mass")


@dataclasses.dataclass(frozen=True)
class TopKTap(Tap):
    """A teacher tensor computed from its full logits: the top-k logits, their class ids, or
    the softened mass of the other classes (`keras_kd.losses.functional.top_k_teacher_targets`).

    A cache stores it under `key` instead of the logits (`cache_teacher_outputs(...,
    taps=distiller.teacher_taps)`); a live teacher's logits give it inside the step. `layer`
    is set to the key, which no Keras layer can be named (it holds a `/`), so a model never
    mistakes it for one of its layers.

    Args:
        part: "values", "indices" or "rest_mass".
        top_k: how many classes are kept.
        temperature: the temperature of the rest mass (`None` for the other two parts, which
            do not depend on it).

    Keys: `"logits/top_{k}_values"`, `"logits/top_{k}_indices"` and
    `"logits/top_{k}_rest_mass_T{T}"` (e.g. `"logits/top_20_rest_mass_T4.0"`), so a cache made
    for another `k` or `T` is refused by the `Distiller` as missing tensors.
    """

    part: str = "values"
    top_k: int = 1
    temperature: float | None = None

    def __post_init__(self):
        validation.one_of("part", self.part, TOP_K_PARTS)
        validation.positive_int("top_k", self.top_k)
        if (self.part == "rest_mass") != (self.temperature is not None):
            raise ValueError(
                f"TopKTap(part={self.part!r}) takes a temperature only for part='rest_mass', "
                f"got temperature={self.temperature!r}."
            )
        object.__setattr__(self, "layer", self.key)

    @property
    def key(self) -> str:
        if self.part == "rest_mass":
            return f"logits/top_{self.top_k}_rest_mass_T{self.temperature!r}"
        return f"logits/top_{self.top_k}_{self.part}"

    def describe(self) -> str:
        return f"top-{self.top_k} {self.part} of the logits"

    def from_logits(self, logits):
        """This tensor, computed from `(batch, ..., classes)` logits."""
        values, indices, rest = top_k_teacher_targets(
            logits, self.top_k, 1.0 if self.temperature is None else self.temperature)
        return {"values": values, "indices": indices, "rest_mass": rest}[self.part]


def model_taps(taps: Sequence[Tap]) -> tuple[Tap, ...]:
    """The taps a model must give for `taps`: each `TopKTap` is replaced by `LOGITS`."""
    return tuple(dict.fromkeys(LOGITS if isinstance(t, TopKTap) else t for t in taps))


def add_top_k_tensors(tensors: Mapping, taps: Sequence[Tap]) -> dict:
    """`tensors` (keyed by tap, with `LOGITS`) plus the tensor of each `TopKTap` in `taps`."""
    tensors = dict(tensors)
    for tap in taps:
        if isinstance(tap, TopKTap):
            tensors[tap] = tap.from_logits(tensors[LOGITS])
    return tensors


@keras.saving.register_keras_serializable(package="keras_kd")
class TopKSoftTargetDistillation(DistillationLoss):
    """Soft-target distillation from the teacher's top-k classes plus one rest bucket.

    For many classes (a 32k-token vocabulary, 1,000 ImageNet classes) a cache of full logits
    costs `4 * classes` bytes per example; this loss needs only the top-k logits, their class
    ids and one float, `8 * k + 4` bytes. The student's distribution is collapsed to the
    teacher's `k` classes plus one rest bucket, and the two `k + 1`-bucket distributions are
    compared (`keras_kd.losses.functional.top_k_soft_target_kl`). The temperature is fixed:
    the rest mass is computed at it when the cache is written, so it is not a schedulable
    variable (`TemperatureScheduler` leaves this loss alone).

    The teacher tensors are `TopKTap`s: cache them with
    `cache_teacher_outputs(teacher, data, taps=distiller.teacher_taps)` or
    `keras_kd.teachers.stream_teacher_outputs(...)`, then train a `Distiller` (its teacher
    may be `None`) on the cached batches. With a live teacher they are computed from its
    logits inside the step, which gives the same values.

    Args:
        top_k: how many teacher classes are kept, `1 <= top_k < classes` (no default: it
            sets the size of the cache and the error of the loss, see BENCHMARKS.md).
        temperature: softening temperature `T > 0`, fixed (the cache stores the rest mass at
            it).

    Returns (when called):
        `(batch,)` values (per position for `(batch, ..., classes)` outputs):
        `T^2 * [sum_{j in K} p_j (log p_j - log q_j) + r (log r - log q_rest)]`, with
        `p_j = (1 - r) softmax(v/T)_j`, `r` the teacher's softmax mass outside its top-k `K`,
        `q = softmax(s/T)` and `q_rest = 1 - sum_{j in K} q_j`.

    Raises:
        TypeError, ValueError: for a `top_k` that is not a positive integer or a temperature
            that is not a finite real number > 0; `ValueError` when called with
            `top_k >= classes`.

    Example:
        >>> loss = TopKSoftTargetDistillation(top_k=20, temperature=4.0)
        >>> distiller = keras_kd.Distiller(None, student, loss, student_loss_weight=0.1)
        >>> cached = keras_kd.cache_teacher_outputs(teacher, x, y, taps=distiller.teacher_taps)
        >>> distiller.fit(cached.shuffle(10_000).batch(128), epochs=5)

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
        `T^2 * KL([p_K, r] || [q_K, q_rest])`.
    """

    def __init__(self, top_k: int, temperature: float = 4.0, name: str | None = None,
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.top_k = validation.positive_int(
            "top_k", top_k, hint="Pass how many teacher classes to keep, e.g. 20.")
        self.temperature = validation.positive(
            "temperature", temperature, hint="Pass the softening temperature T, e.g. 4.0.")

    def teacher_taps(self) -> tuple[Tap, ...]:
        return (
            TopKTap(part="values", top_k=self.top_k),
            TopKTap(part="indices", top_k=self.top_k),
            TopKTap(part="rest_mass", top_k=self.top_k, temperature=self.temperature),
        )

    def output_family(self) -> str:
        return "categorical"

    def call(self, teacher_features, student_features):
        values, indices, rest = teacher_features
        return top_k_soft_target_kl(values, indices, rest, student_features[0],
                                    self.temperature)

    def get_config(self) -> dict:
        config = super().get_config()
        config["top_k"] = self.top_k
        config["temperature"] = self.temperature
        return config
