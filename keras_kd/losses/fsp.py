"""FSP (flow of solution procedure) matrices (Yim et al. 2017)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import keras

from keras_kd.adapters import (
    AUTO,
    check_adapter,
    deserialize_adapter,
    make_adapter,
    resize_spatial,
    serialize_adapter,
)
from keras_kd.losses.base import DistillationLoss, Tap
from keras_kd.losses.functional import fsp_loss

_NAME_COUNTER = itertools.count()


def _layer_pair(value, argument: str) -> tuple[str, str]:
    if (
        isinstance(value, str)
        or not isinstance(value, Sequence)
        or len(value) != 2
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise ValueError(
            f"{argument} must be a pair of layer names (first, second), got {value!r}."
        )
    return (value[0], value[1])


def _pair_size(shape_a: tuple, shape_b: tuple, role: str, layers: tuple[str, str]):
    """The common spatial size of a pair: the smaller one (the larger map is pooled)."""
    if len(shape_a) != 4 or len(shape_b) != 4:
        raise ValueError(
            f"FSPDistillation needs 4-D (batch, H, W, C) features; {role} layers {layers} give "
            f"{shape_a} and {shape_b}."
        )
    size_a, size_b = tuple(shape_a[1:3]), tuple(shape_b[1:3])
    if size_a == size_b:
        return size_a
    return (min(size_a[0], size_b[0]), min(size_a[1], size_b[1]))


@keras.saving.register_keras_serializable(package="keras_kd")
class FSPDistillation(DistillationLoss):
    """Matches the teacher's and the student's FSP matrices between two layers.

    Within each network, the larger of the two maps is average-pooled to the smaller spatial
    size (as common FSP implementations do). The student's maps must have the teacher's channel
    counts; with `adapter="auto"` a 1x1 conv (+BN) adapter maps each student map whose
    channel count differs (an addition to the paper, whose students had the teacher's widths).

    Args:
        teacher_layers: `(first, second)` teacher layer names.
        student_layers: `(first, second)` student layer names.
        adapter: `"auto"` or `None` (channel counts must then match).

    Returns (when called):
        `(batch,)` values `mean_{ij} (G_t_ij - G_s_ij)^2` with
        `G_ij = sum_{h,w} F1_{h,w,i} F2_{h,w,j} / (H W)`.

    Example:
        >>> fsp = FSPDistillation(("t_block1", "t_block2"), ("s_block1", "s_block2"))

    Reference:
        Yim, Joo, Bae & Kim, "A Gift from Knowledge Distillation: Fast Optimization, Network
        Minimization and Transfer Learning", CVPR 2017.
        `L_FSP = 1/N sum_x sum_i lambda_i ||G_i^T(x) - G_i^S(x)||_2^2`.
    """

    def __init__(
        self,
        teacher_layers: Sequence[str],
        student_layers: Sequence[str],
        adapter=AUTO,
        name: str | None = None,
        **kwargs,
    ):
        if name is None:  # the automatic name would be "f_s_p_distillation"
            count = next(_NAME_COUNTER)
            name = "fsp_distillation" if count == 0 else f"fsp_distillation_{count}"
        super().__init__(name=name, **kwargs)
        self.teacher_layers = _layer_pair(teacher_layers, "teacher_layers")
        self.student_layers = _layer_pair(student_layers, "student_layers")
        if adapter is not None and not (isinstance(adapter, str) and adapter == AUTO):
            raise ValueError(f"adapter must be 'auto' or None, got {adapter!r}.")
        self.adapter_arg = check_adapter(adapter, "adapter")
        self.adapters = [None, None]
        self._t_size = self._s_size = None

    def teacher_taps(self) -> tuple[Tap, ...]:
        return tuple(Tap(name) for name in self.teacher_layers)

    def student_taps(self) -> tuple[Tap, ...]:
        return tuple(Tap(name) for name in self.student_layers)

    def build(self, teacher_shapes, student_shapes) -> None:
        if self.built:  # already built from its config when loaded from a .keras file
            return
        t_shapes = [tuple(s) for s in teacher_shapes]
        s_shapes = [tuple(s) for s in student_shapes]
        self._t_size = _pair_size(*t_shapes, "teacher", self.teacher_layers)
        self._s_size = _pair_size(*s_shapes, "student", self.student_layers)
        adapters = []
        for i, (t_shape, s_shape) in enumerate(zip(t_shapes, s_shapes)):
            target = (None, s_shape[1], s_shape[2], t_shape[-1])
            adapters.append(
                make_adapter(
                    self.adapter_arg, target, s_shape, name=f"{self.name}_adapter_{i}",
                    role="adapter",
                )
            )
        self.adapters = adapters
        self.built = True

    def call(self, teacher_features, student_features):
        t_a, t_b = (resize_spatial(keras.ops.cast(t, "float32"), self._t_size)
                    for t in teacher_features)
        students = []
        for feature, adapter in zip(student_features, self.adapters):
            if adapter is not None:
                feature = adapter(feature)
            students.append(resize_spatial(keras.ops.cast(feature, "float32"), self._s_size))
        return fsp_loss(t_a, t_b, students[0], students[1])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "teacher_layers": list(self.teacher_layers),
                "student_layers": list(self.student_layers),
                "adapter": serialize_adapter(self.adapter_arg),
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict):
        config = dict(config)
        config.setdefault("adapter", config.pop("regressor", AUTO))  # older .keras files
        config["adapter"] = deserialize_adapter(config["adapter"])
        return cls(**config)
