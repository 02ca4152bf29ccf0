"""Small classifier builders used by the examples, recipes and benchmarks.

Every builder returns a functional `keras.Model` that outputs **logits** (no softmax): compile it
with `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras


def _check_units(name: str, units: Sequence[int]) -> list[int]:
    units = list(units)
    if not all(isinstance(u, int) and not isinstance(u, bool) and u > 0 for u in units):
        raise ValueError(f"{name} must be a sequence of positive integers, got {units!r}.")
    return units


def _check_rate(name: str, rate: float) -> float:
    if not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {rate!r}.")
    return float(rate)


def mlp(
    hidden_units: Sequence[int] = (800, 800),
    dropout: float = 0.0,
    input_shape: tuple[int, ...] = (28, 28, 1),
    num_classes: int = 10,
    input_dropout: float = 0.0,
    max_norm: float | None = None,
    name: str = "mlp",
) -> keras.Model:
    """A ReLU multilayer perceptron over flattened inputs.

    Args:
        hidden_units: width of each hidden layer, e.g. `(1200, 1200)` for Hinton et al.'s
            MNIST teacher or `(800, 800)` for its student.
        dropout: dropout rate after each hidden layer.
        input_shape: shape of one input example (flattened first).
        num_classes: number of output logits.
        input_dropout: dropout rate on the flattened input (Hinton et al. 2012 used 0.2).
        max_norm: if given, a `keras.constraints.MaxNorm` on every hidden kernel: the "weight
            constraints" used with dropout by Hinton et al. 2012 (values of 2-4 are common).
        name: model name.

    Returns:
        A `keras.Model` mapping `(batch, *input_shape)` to `(batch, num_classes)` logits.

    Example:
        >>> teacher = mlp((1200, 1200), dropout=0.5, input_dropout=0.2, name="teacher")
        >>> student = mlp((800, 800), name="student")
    """
    units = _check_units("hidden_units", hidden_units)
    dropout = _check_rate("dropout", dropout)
    input_dropout = _check_rate("input_dropout", input_dropout)
    constraint = keras.constraints.MaxNorm(max_norm) if max_norm is not None else None
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = keras.layers.Flatten(name="flatten")(inputs)
    if input_dropout:
        x = keras.layers.Dropout(input_dropout, name="input_dropout")(x)
    for i, width in enumerate(units):
        x = keras.layers.Dense(
            width, activation="relu", kernel_constraint=constraint, name=f"dense_{i}"
        )(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"dropout_{i}")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def cnn(
    filters: Sequence[int] = (32, 64),
    dense_units: int = 128,
    dropout: float = 0.0,
    input_shape: tuple[int, ...] = (28, 28, 1),
    num_classes: int = 10,
    name: str = "cnn",
) -> keras.Model:
    """A small VGG-style convnet: per stage a 3x3 ReLU conv and a 2x2 max-pool, then a dense layer.

    Conv layers are named `conv_{i}` and their ReLUs `relu_{i}` so feature losses can tap them
    (pre- or post-activation).

    Args:
        filters: output channels of each conv stage.
        dense_units: width of the hidden dense layer (0 for none).
        dropout: dropout rate before the logits.
        input_shape: shape of one input image `(H, W, C)`.
        num_classes: number of output logits.
        name: model name.

    Returns:
        A `keras.Model` mapping `(batch, H, W, C)` images to `(batch, num_classes)` logits.

    Example:
        >>> teacher = cnn((32, 64), dense_units=128, dropout=0.3, name="teacher")
    """
    stages = _check_units("filters", filters)
    dropout = _check_rate("dropout", dropout)
    if not isinstance(dense_units, int) or dense_units < 0:
        raise ValueError(f"dense_units must be a non-negative integer, got {dense_units!r}.")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    for i, channels in enumerate(stages):
        x = keras.layers.Conv2D(channels, 3, padding="same", name=f"conv_{i}")(x)
        x = keras.layers.ReLU(name=f"relu_{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool_{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    if dense_units:
        x = keras.layers.Dense(dense_units, activation="relu", name="dense")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=name)
