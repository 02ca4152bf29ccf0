"""Trainable adapters: the layers that map a student feature to the teacher's shape.

A feature loss creates its adapters in `build(teacher_shapes, student_shapes)` as sublayers, so
they train with the student (they are in `distiller.trainable_variables`) and are never part of
`distiller.student`, which is what gets saved and exported.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from keras_kd import validation

AUTO = "auto"


def resize_spatial(x, size: Sequence[int]):
    """Resizes a `(batch, H, W, C)` map to `size = (H', W')`.

    Integer down-scaling uses average pooling (each output is the mean of its block, the
    adaptive average pooling of FitNets/FSP implementations); anything else is bilinear.

    Args:
        x: channels-last 4-D tensor.
        size: target `(height, width)`.

    Returns:
        The resized tensor (unchanged when the size already matches).
    """
    height, width = int(size[0]), int(size[1])
    in_h, in_w = x.shape[1], x.shape[2]
    if (in_h, in_w) == (height, width):
        return x
    if in_h is not None and in_w is not None and in_h % height == 0 and in_w % width == 0:
        pool = (in_h // height, in_w // width)
        return ops.average_pool(x, pool_size=pool, strides=pool, padding="valid")
    return ops.image.resize(x, (height, width), interpolation="bilinear")


@keras.saving.register_keras_serializable(package="keras_kd")
class FeatureAdapter(keras.layers.Layer):
    """Maps a student feature to a target (teacher) shape.

    For a 4-D target `(H, W, C)`: the student map is resized to `H x W` (average pooling for
    integer factors, bilinear otherwise), then a 1x1 convolution gives `C` channels, followed
    by `BatchNormalization` when `batch_norm=True`. For a 2-D target `(D,)`: a 4-D student map
    is global-average-pooled, then a `Dense(D)` layer maps it.

    Args:
        target_shape: the teacher feature shape without the batch axis.
        batch_norm: add BatchNormalization after the 1x1 convolution (4-D targets).
        name: layer name.

    Example:
        >>> adapter = FeatureAdapter((7, 7, 64))
        >>> adapter(keras.ops.ones((2, 14, 14, 16))).shape
        (2, 7, 7, 64)

    Reference:
        Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015 (the map `r(v)`);
        Heo et al., "A Comprehensive Overhaul of Feature Distillation", ICCV 2019 (1x1 conv
        + BN).
    """

    def __init__(self, target_shape: Sequence[int], batch_norm: bool = True, **kwargs):
        kwargs.pop("dtype", None)
        super().__init__(dtype="float32", **kwargs)
        if isinstance(target_shape, (str, bytes)) or not isinstance(target_shape, Sequence):
            raise TypeError(
                f"target_shape must be a tuple (H, W, C) or (D,), got {target_shape!r}."
            )
        if len(target_shape) not in (1, 3):
            raise ValueError(
                "target_shape must be (H, W, C) or (D,) with positive sizes (batch axis "
                f"excluded), got {tuple(target_shape)}."
            )
        target_shape = tuple(
            validation.positive_int(
                f"target_shape[{i}]", d,
                hint="The teacher feature needs a static shape (no None sizes besides the "
                "batch axis).",
            )
            for i, d in enumerate(target_shape)
        )
        self.target_shape = target_shape
        self.batch_norm = bool(batch_norm)

    def build(self, input_shape):
        rank = len(input_shape)
        if len(self.target_shape) == 3:
            if rank != 4:
                raise ValueError(
                    f"FeatureAdapter cannot map a student feature of shape {tuple(input_shape)} "
                    f"to a 4-D teacher feature {self.target_shape}: tap a 4-D student layer."
                )
            self.conv = keras.layers.Conv2D(
                self.target_shape[-1],
                1,
                use_bias=not self.batch_norm,
                kernel_initializer="he_normal",
                dtype="float32",
                name="conv1x1",
            )
            self.conv.build((None, self.target_shape[0], self.target_shape[1], input_shape[-1]))
            self.norm = None
            if self.batch_norm:
                self.norm = keras.layers.BatchNormalization(dtype="float32", name="bn")
                self.norm.build((None, *self.target_shape))
        else:
            if rank not in (2, 4):
                raise ValueError(
                    f"FeatureAdapter maps 2-D or 4-D student features to a vector, got shape "
                    f"{tuple(input_shape)}."
                )
            self.dense = keras.layers.Dense(self.target_shape[0], dtype="float32", name="dense")
            self.dense.build((None, input_shape[-1]))
        self.built = True

    def call(self, inputs, training=None):
        x = ops.cast(inputs, "float32")
        if len(self.target_shape) == 3:
            x = resize_spatial(x, self.target_shape[:2])
            x = self.conv(x)
            if self.norm is not None:
                x = self.norm(x, training=training)
            return x
        if len(x.shape) == 4:
            x = ops.mean(x, axis=(1, 2))
        return self.dense(x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.target_shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("dtype", None)
        config.update({"target_shape": list(self.target_shape), "batch_norm": self.batch_norm})
        return config


def check_adapter(adapter, role: str = "adapter"):
    """Returns `adapter` if it is `"auto"`, `None` or a layer; raises `ValueError` otherwise."""
    if adapter is None or isinstance(adapter, keras.layers.Layer):
        return adapter
    if isinstance(adapter, str) and adapter == AUTO:
        return adapter
    raise ValueError(
        f"{role} must be 'auto', None or a keras.layers.Layer instance, got {adapter!r}."
    )


def make_adapter(
    adapter,
    teacher_shape: Sequence,
    student_shape: Sequence,
    *,
    always: bool = False,
    batch_norm: bool = True,
    name: str = "adapter",
    role: str = "adapter",
):
    """Returns the built layer mapping a student feature to `teacher_shape`, or `None`.

    Args:
        adapter: `"auto"` (a `FeatureAdapter` when the shapes differ, or always when
            `always=True`), `None` (identity; the shapes must already match) or a user layer.
        teacher_shape: static teacher feature shape, batch axis included.
        student_shape: static student feature shape, batch axis included.
        always: build an adapter even for equal shapes (as Overhaul distillation does).
        batch_norm: passed to `FeatureAdapter`.
        name: name of the created adapter.
        role: argument name used in error messages.

    Returns:
        A built `keras.layers.Layer`, or `None` for the identity.

    Raises:
        ValueError: when the shapes differ and `adapter=None`, or a user layer does not map
            the student shape to the teacher shape.
    """
    check_adapter(adapter, role)
    t_shape, s_shape = tuple(teacher_shape[1:]), tuple(student_shape[1:])
    if adapter is None:
        if t_shape != s_shape:
            raise ValueError(
                f"{role}=None needs equal teacher and student feature shapes, got teacher "
                f"{t_shape} and student {s_shape}. Use {role}='auto' to learn an adapter."
            )
        return None
    if isinstance(adapter, str):
        if t_shape == s_shape and not always:
            return None
        layer = FeatureAdapter(t_shape, batch_norm=batch_norm, name=name)
    else:
        layer = adapter
    if not layer.built:
        layer.build((None, *s_shape))
    try:
        out_shape = tuple(layer.compute_output_shape((None, *s_shape)))[1:]
    except NotImplementedError:
        out_shape = None
    if out_shape is not None and tuple(out_shape) != t_shape:
        raise ValueError(
            f"The {role} layer '{layer.name}' maps the student feature {s_shape} to "
            f"{tuple(out_shape)}, but the teacher feature has shape {t_shape}."
        )
    return layer


def serialize_adapter(adapter):
    """Config value for an adapter argument (`"auto"`, `None` or a serialized layer)."""
    if isinstance(adapter, keras.layers.Layer):
        return keras.saving.serialize_keras_object(adapter)
    return adapter


def deserialize_adapter(value):
    """Inverse of `serialize_adapter`."""
    if isinstance(value, dict):
        return keras.saving.deserialize_keras_object(value)
    return value


__all__ = [
    "AUTO",
    "FeatureAdapter",
    "check_adapter",
    "deserialize_adapter",
    "make_adapter",
    "resize_spatial",
    "serialize_adapter",
]
