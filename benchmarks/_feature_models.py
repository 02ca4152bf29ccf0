"""The teachers and students of the feature-distillation benchmarks (shared by two scripts)."""

from __future__ import annotations

import keras


def _cnn(prefix: str, widths: tuple[int, ...], embed: int, depth: int = 1) -> keras.Model:
    """Stages of `depth` conv-BN-ReLU blocks, max-pooling between stages.

    ReLU is its own layer so pre-ReLU features can be tapped; the last ReLU of stage `i` is
    named `{prefix}relu{i}` whatever the depth (the taps of the benchmarks).
    """
    inputs = keras.Input((28, 28, 1))
    h = inputs
    for i, width in enumerate(widths, start=1):
        for j in range(1, depth + 1):
            suffix = f"{i}" if j == depth else f"{i}_{j}"
            h = keras.layers.Conv2D(width, 3, padding="same", use_bias=False,
                                    name=f"{prefix}conv{suffix}")(h)
            # momentum 0.9: the moving statistics settle within the short budgets used here
            h = keras.layers.BatchNormalization(momentum=0.9, name=f"{prefix}bn{suffix}")(h)
            h = keras.layers.ReLU(name=f"{prefix}relu{suffix}")(h)
        if i < len(widths):
            h = keras.layers.MaxPooling2D(name=f"{prefix}pool{i}")(h)
    h = keras.layers.Flatten(name=f"{prefix}flatten")(h)
    h = keras.layers.Dense(embed, activation="relu", name=f"{prefix}embed")(h)
    outputs = keras.layers.Dense(10, name=f"{prefix}logits")(h)
    return keras.Model(inputs, outputs, name=f"{prefix}cnn")


def teacher_model() -> keras.Model:
    """CNN 32-64-128 + Dense 128 (about 0.9 M parameters)."""
    return _cnn("t_", (32, 64, 128), 128)


def student_model() -> keras.Model:
    """CNN 8-16-32 + Dense 32 (about 57 k parameters)."""
    return _cnn("s_", (8, 16, 32), 32)


def twin_teacher_model() -> keras.Model:
    """A teacher with the student's architecture: every tap has the student's shape."""
    return _cnn("t_", (8, 16, 32), 32)


def medium_teacher_model() -> keras.Model:
    """CNN 2x32-2x64-2x128 + Dense 128 (about 1.1 M parameters, 4x the medium student)."""
    return _cnn("t_", (32, 64, 128), 128, depth=2)


def medium_student_model() -> keras.Model:
    """CNN 2x16-2x32-2x64 + Dense 64 (about 0.27 M parameters)."""
    return _cnn("s_", (16, 32, 64), 64, depth=2)


def forward_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one example's forward pass through the Conv2D and Dense layers.

    A Conv2D counts `H_out * W_out * k_h * k_w * C_in * C_out`, a Dense `in * out`.
    Element-wise work (BN, ReLU, pooling) is not counted.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, c_in, c_out = (int(d) for d in layer.kernel.shape)
            out_h, out_w = int(layer.output.shape[1]), int(layer.output.shape[2])
            total += out_h * out_w * kh * kw * c_in * c_out
        elif isinstance(layer, keras.layers.Dense):
            total += int(layer.kernel.shape[0]) * int(layer.kernel.shape[1])
    return total
