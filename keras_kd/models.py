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


def _conv_bn(x, channels: int, strides: int, name: str, weight_decay: float):
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None
    x = keras.layers.Conv2D(
        channels, 3, strides=strides, padding="same", use_bias=False,
        kernel_initializer="he_normal", kernel_regularizer=regularizer, name=f"{name}_conv",
    )(x)
    return keras.layers.BatchNormalization(name=f"{name}_bn")(x)


def resnet_cifar(
    depth: int = 20,
    widths: Sequence[int] = (16, 32, 64),
    input_shape: tuple[int, ...] = (32, 32, 3),
    num_classes: int = 10,
    weight_decay: float = 0.0,
    name: str = "resnet",
) -> keras.Model:
    """The CIFAR ResNet of He et al. 2016 (Sec. 4.2): 3 stages of `(depth - 2) / 6` basic blocks.

    A 3x3 stem conv, then per stage `n = (depth - 2) / 6` blocks of two 3x3 conv + BN layers with an
    identity shortcut (a strided 1x1 conv + BN where the shape changes), global average pooling and
    a dense logits layer. ResNet-20 with widths (16, 32, 64) has 0.27 M parameters; ResNet-8x4 of
    the CRD benchmark is `resnet_cifar(8, (64, 128, 256))`.

    The output of stage `s` (after its last block's ReLU) is the layer `stage{s}` (s = 1, 2, 3) and
    the pooled embedding is `pool`, so feature losses can tap them; each block's pre-ReLU sum is
    `stage{s}_block{b}_add`.

    Args:
        depth: `6 n + 2` (8, 14, 20, 32, 44, 56, 110).
        widths: channels of the three stages (the stem has `widths[0]`).
        input_shape: shape of one input image `(H, W, C)`.
        num_classes: number of output logits.
        weight_decay: L2 factor on conv kernels (0 for none; SGD's `weight_decay` is the
            alternative).
        name: model name.

    Returns:
        A `keras.Model` mapping `(batch, H, W, C)` images to `(batch, num_classes)` logits.

    Example:
        >>> teacher = resnet_cifar(20, name="resnet20")          # 0.27 M parameters
        >>> student = resnet_cifar(8, (8, 16, 32), name="resnet8_half")

    Reference:
        He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
    """
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth!r}.")
    stages = _check_units("widths", widths)
    if len(stages) != 3:
        raise ValueError(f"widths must have 3 entries (one per stage), got {stages!r}.")
    blocks = (depth - 2) // 6
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = _conv_bn(inputs, stages[0], 1, "stem", weight_decay)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for s, channels in enumerate(stages, start=1):
        for b in range(blocks):
            prefix = f"stage{s}_block{b}"
            strides = 2 if (s > 1 and b == 0) else 1
            y = _conv_bn(x, channels, strides, f"{prefix}_a", weight_decay)
            y = keras.layers.ReLU(name=f"{prefix}_a_relu")(y)
            y = _conv_bn(y, channels, 1, f"{prefix}_b", weight_decay)
            if strides != 1 or x.shape[-1] != channels:
                regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None
                x = keras.layers.Conv2D(
                    channels, 1, strides=strides, use_bias=False, kernel_initializer="he_normal",
                    kernel_regularizer=regularizer, name=f"{prefix}_shortcut_conv",
                )(x)
                x = keras.layers.BatchNormalization(name=f"{prefix}_shortcut_bn")(x)
            x = keras.layers.Add(name=f"{prefix}_add")([x, y])
            last = b == blocks - 1
            x = keras.layers.ReLU(name=f"stage{s}" if last else f"{prefix}_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=name)



_PLAIN_CNN_SPECS = {
    2: (16, "pool", 16, "pool"),
    4: (16, 16, "pool", 32, 32, "pool"),
    6: (16, 16, "pool", 32, 32, "pool", 64, 64, "pool"),
    8: (16, 16, "pool", 32, 32, "pool", 64, 64, "pool", 128, 128, "pool", "fc64"),
    10: (32, 32, "pool", 64, 64, "pool", 128, 128, "pool", 256, 256, 256, 256, "pool", "fc128"),
}


def plain_cnn(
    layers: int = 2,
    input_shape: tuple[int, ...] = (32, 32, 3),
    num_classes: int = 10,
    name: str | None = None,
) -> keras.Model:
    """The plain CNNs ("plane" networks) of the teacher-assistant paper for CIFAR-10.

    The layer count is the number of conv layers (3x3, stride 1, "same" padding, then
    BatchNormalization and ReLU), 2x2 max-pooling between stages, a flatten and the dense
    logits, following `plane_cifar10_book` of the paper's code (2 = Conv16-Pool-Conv16-Pool-FC10,
    4 = Conv16-Conv16-Pool-Conv32-Conv32-Pool-FC10, ...; 8 and 10 end in a hidden ReLU dense
    layer of 64 and 128 units). The 10-layer network is the paper's teacher.
    The 2-layer network is the paper's student, the 4-layer one an assistant.

    Conv `i` (from 0) is `conv_{i}`, its BatchNormalization `bn_{i}` (the pre-activation feature)
    and its ReLU `relu_{i}`; the flattened features are `flatten`.

    Args:
        layers: 2, 4, 6, 8 or 10.
        input_shape: shape of one input image `(H, W, C)`.
        num_classes: number of output logits.
        name: model name (default `plain{layers}`).

    Returns:
        A `keras.Model` mapping `(batch, H, W, C)` images to `(batch, num_classes)` logits.

    Example:
        >>> student, assistant = plain_cnn(2), plain_cnn(4)   # 13 k and 38 k parameters

    Reference:
        Mirzadeh, Farajtabar, Li, Levine, Matsukawa & Ghasemzadeh, "Improved Knowledge
        Distillation via Teacher Assistant", AAAI 2020 (code: `plane_cifar10_book`).
    """
    if layers not in _PLAIN_CNN_SPECS:
        raise ValueError(f"layers must be one of {sorted(_PLAIN_CNN_SPECS)}, got {layers!r}.")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x, conv = inputs, 0
    for item in _PLAIN_CNN_SPECS[layers]:
        if item == "pool":
            x = keras.layers.MaxPooling2D(2, name=f"pool_{conv - 1}")(x)
        elif isinstance(item, str):  # "fc<units>"
            if len(x.shape) > 2:
                x = keras.layers.Flatten(name="flatten")(x)
            x = keras.layers.Dense(int(item[2:]), activation="relu", name="dense")(x)
        else:
            x = keras.layers.Conv2D(item, 3, padding="same", name=f"conv_{conv}")(x)
            x = keras.layers.BatchNormalization(name=f"bn_{conv}")(x)
            x = keras.layers.ReLU(name=f"relu_{conv}")(x)
            conv += 1
    if len(x.shape) > 2:
        x = keras.layers.Flatten(name="flatten")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=name or f"plain{layers}")
