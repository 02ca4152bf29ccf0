"""The teacher and student of the feature-distillation benchmarks (shared by two scripts)."""

from __future__ import annotations

import keras


def _cnn(prefix: str, widths: tuple[int, int, int], embed: int) -> keras.Model:
    """conv-BN-ReLU blocks (ReLU as its own layer so pre-ReLU features can be tapped)."""
    inputs = keras.Input((28, 28, 1))
    h = inputs
    for i, width in enumerate(widths, start=1):
        h = keras.layers.Conv2D(width, 3, padding="same", use_bias=False,
                                name=f"{prefix}conv{i}")(h)
        # momentum 0.9: the moving statistics settle within the short budgets used here
        h = keras.layers.BatchNormalization(momentum=0.9, name=f"{prefix}bn{i}")(h)
        h = keras.layers.ReLU(name=f"{prefix}relu{i}")(h)
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
