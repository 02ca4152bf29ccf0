"""DeepInversion (Yin et al., CVPR 2020): inputs that match the teacher's BatchNorm statistics.

Inputs start from Gaussian noise and are optimised so that (1) the teacher classifies them as
sampled target classes, (2) the batch statistics of the input of every BatchNormalization layer
match that layer's running mean and variance, and (3) image priors hold (total variation, L2);
optionally (4) Adaptive DeepInversion's competition term pushes the inputs where a student
disagrees with the teacher. The teacher is frozen and run with `training=False` (its BN layers
normalise with the running statistics; only their *inputs'* statistics are measured).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_kd import validation
from keras_kd.datafree.inversion import BatchStart, SyntheticSet, balanced_classes, invert
from keras_kd.datafree.metadata import weights_sha256
from keras_kd.features import FeatureExtractor
from keras_kd.losses.base import LOGITS


# ---------------------------------------------------------------------- objectives
def batch_norm_statistics_distance(features, moving_mean, moving_variance, axis: int = -1):
    """`||mu(f) - running_mean||_2 + ||var(f) - running_var||_2` for one BN layer's input.

    Args:
        features: the input of the BatchNormalization layer, `(batch, ..., channels)` with the
            channels on `axis`.
        moving_mean: `(channels,)` the layer's running mean.
        moving_variance: `(channels,)` the layer's running variance.
        axis: the channel axis.

    Returns:
        A float32 scalar. `mu` and the biased `var` are taken over every axis but `axis`.

    Example:
        >>> batch_norm_statistics_distance(bn_input, bn.moving_mean, bn.moving_variance)

    Reference:
        Yin et al., "Dreaming to Distill: Data-free Knowledge Transfer via DeepInversion",
        CVPR 2020, eq. (4) (code: `DeepInversionFeatureHook`).
        `||mu_l(x) - E(mu_l | X)||_2 + ||sigma_l^2(x) - E(sigma_l^2 | X)||_2`.
    """
    f = ops.cast(features, "float32")
    rank = len(f.shape)
    axis = axis % rank
    reduce = tuple(a for a in range(rank) if a != axis)
    mean = ops.mean(f, axis=reduce)
    var = ops.mean(ops.square(f - ops.reshape(mean, [-1 if a == axis else 1
                                                      for a in range(rank)])), axis=reduce)
    rm = ops.cast(moving_mean, "float32")
    rv = ops.cast(moving_variance, "float32")
    return ops.sqrt(ops.sum(ops.square(rv - var))) + ops.sqrt(ops.sum(ops.square(rm - mean)))


def _differences(x):
    x = ops.cast(x, "float32")
    return (
        x[:, :, :-1, :] - x[:, :, 1:, :],
        x[:, :-1, :, :] - x[:, 1:, :, :],
        x[:, 1:, :-1, :] - x[:, :-1, 1:, :],
        x[:, :-1, :-1, :] - x[:, 1:, 1:, :],
    )


def total_variation_l2(images):
    """Sum over the four neighbour directions of the L2 norm of the differences.

    Args:
        images: `(batch, H, W, C)` images.

    Returns:
        A float32 scalar: `sum_d ||x[shifted by d] - x||_2`, each norm over the whole batch.

    Reference:
        Yin et al. 2020, the prior `R_TV` (code: `get_image_prior_losses`, `loss_var_l2`).
    """
    return sum(ops.sqrt(ops.sum(ops.square(d))) for d in _differences(images))


def total_variation_l1(images):
    """Sum over the four neighbour directions of the mean absolute difference.

    Reference:
        Yin et al. 2020 (code: `get_image_prior_losses`, `loss_var_l1`, here without its
        `/255 * 255`). `sum_d mean|x[shifted by d] - x|`.
    """
    return sum(ops.mean(ops.abs(d)) for d in _differences(images))


def image_l2(images):
    """Mean over the batch of each input's L2 norm (the prior `R_l2`; code: `loss_l2`)."""
    x = ops.cast(images, "float32")
    x = ops.reshape(x, (ops.shape(x)[0], -1))
    return ops.mean(ops.sqrt(ops.sum(ops.square(x), axis=-1)))


def competition_loss(teacher_logits, student_logits, temperature=3.0):
    """Adaptive DeepInversion's competition term `1 - JS(p_T, p_S)`, averaged over the batch.

    Args:
        teacher_logits: `(batch, classes)`.
        student_logits: `(batch, classes)`.
        temperature: `T` softening both distributions (3 in the authors' code).

    Returns:
        A float32 scalar `1 - mean_b JS_b`, `JS = (KL(p_T || M) + KL(p_S || M)) / 2`,
        `M = (p_T + p_S) / 2`, natural logarithms (so JS is in [0, ln 2]).

    Reference:
        Yin et al. 2020, eq. (8): `L_compete = 1 - JS(p_T(x), p_S(x))`. (The authors' code
        clips the probabilities to [0.01, 0.99] and takes `KL(M || .)`; the paper's
        definition is used here.)
    """
    t = ops.cast(temperature, "float32")
    log_p = ops.log_softmax(ops.cast(teacher_logits, "float32") / t, axis=-1)
    log_q = ops.log_softmax(ops.cast(student_logits, "float32") / t, axis=-1)
    p, q = ops.exp(log_p), ops.exp(log_q)
    log_m = ops.log(0.5 * (p + q))
    js = 0.5 * ops.sum(p * (log_p - log_m), axis=-1) + 0.5 * ops.sum(q * (log_q - log_m), axis=-1)
    return 1.0 - ops.mean(js)


# ---------------------------------------------------------------------- BN layers
def batch_norm_layers(model: keras.Model) -> list:
    """The BatchNormalization layers of a model's own graph, in layer order."""
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def _nested_batch_norm(model: keras.Model) -> list[str]:
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += [f"{layer.name}/{bn.name}" for bn in batch_norm_layers(layer)]
            found += _nested_batch_norm(layer)
    return found


def _check_bn_teacher(teacher) -> list:
    if not isinstance(teacher, keras.Model):
        raise TypeError(f"teacher must be a keras.Model, got {type(teacher)!r}.")
    try:
        graph = bool(teacher.inputs) and len(teacher.inputs) == 1
    except (AttributeError, ValueError):
        graph = False
    if not graph:
        raise ValueError(
            f"The teacher '{teacher.name}' must be a Functional or Sequential model with one "
            "input, so the inputs of its BatchNormalization layers can be read."
        )
    layers = batch_norm_layers(teacher)
    if not layers:
        nested = _nested_batch_norm(teacher)
        where = (f" (BatchNormalization layers inside nested models, {nested[:3]}, are not "
                 "read: build the teacher as one flat functional model)") if nested else ""
        raise ValueError(
            f"DeepInversion matches the statistics stored in the teacher's BatchNormalization "
            f"layers, but the teacher '{teacher.name}' has none{where}. For a teacher without "
            "BatchNormalization use keras_kd.datafree.DAFL (a generator) or "
            "keras_kd.datafree.reconstruct with ActivationMetadata."
        )
    for bn in layers:
        if isinstance(bn.axis, (list, tuple)) and len(bn.axis) != 1:
            raise ValueError(f"BatchNormalization layer '{bn.name}' normalises over several "
                             f"axes {bn.axis}; DeepInversion reads one channel axis.")
    return layers


def _bn_axis(bn) -> int:
    axis = bn.axis
    return int(axis[0] if isinstance(axis, (list, tuple)) else axis)


# ---------------------------------------------------------------------- the method
def deep_inversion(
    teacher: keras.Model,
    num_samples: int,
    *,
    batch_size: int = 256,
    steps: int = 2000,
    learning_rate: float = 0.05,
    bn_weight: float = 10.0,
    first_bn_multiplier: float = 1.0,
    tv_l2_weight: float = 2.5e-5,
    tv_l1_weight: float = 0.0,
    l2_weight: float = 0.0,
    jitter: int = 2,
    flip: bool = False,
    student: keras.Model | None = None,
    competition_weight: float = 0.0,
    competition_temperature: float = 3.0,
    initial_std: float = 1.0,
    input_range: tuple[float, float] | None = None,
    seed: int = 0,
    checkpoint_dir=None,
    time_limit: float | None = None,
    verbose: int = 1,
) -> SyntheticSet:
    """Synthesises a transfer set from a BatchNorm teacher (DeepInversion / Adaptive DI).

    Each batch: classes are drawn evenly; inputs start as `N(0, initial_std^2)` noise and take
    `steps` Adam steps on
    `CE(t(x~), y) + bn_weight * sum_l m_l R_l + tv_l2_weight * TV_2 + tv_l1_weight * TV_1
    + l2_weight * R_l2 [+ competition_weight * (1 - JS(t(x~), s(x~)))]`,
    where `x~` is `x` rolled by a random offset in `[-jitter, jitter]` pixels (and flipped
    left-right at random if `flip`), `R_l` is `batch_norm_statistics_distance` of BN layer `l`
    (`m_0 = first_bn_multiplier`, the others 1), and teacher and student run with
    `training=False`. Batched, seeded, resumable, stoppable
    (`keras_kd.datafree.inversion.invert`).

    Args:
        teacher: a Functional/Sequential classifier with BatchNormalization layers, outputting
            logits (a final softmax is undone).
        num_samples: size of the synthetic set.
        batch_size: inputs optimised together (256 in the authors' CIFAR-10 code).
        steps: Adam steps per batch (2000 there).
        learning_rate: Adam's learning rate (0.05 with the paper's parameters).
        bn_weight: weight of the BN statistics term (10 with the paper's parameters).
        first_bn_multiplier: extra factor of the first BN layer (10 in the ImageNet code).
        tv_l2_weight: weight of `total_variation_l2` (2.5e-5).
        tv_l1_weight: weight of `total_variation_l1` (0).
        l2_weight: weight of `image_l2` (0).
        jitter: maximum random shift in pixels per step (2 on CIFAR-10).
        flip: also flip left-right at random per step.
        student: the student, for Adaptive DeepInversion (with `competition_weight > 0`).
        competition_weight: weight of `competition_loss` (0.2 in the ImageNet paper runs).
        competition_temperature: its temperature (3).
        initial_std: standard deviation of the starting noise.
        input_range: optional `(low, high)` clip after every step.
        seed: base seed (classes, noise, jitter and flips).
        checkpoint_dir: directory to keep finished batches in and resume from.
        time_limit: seconds after which no batch is started.
        verbose: 1 for a progress bar.

    Returns:
        A `SyntheticSet`; `y` holds the target classes.

    Raises:
        ValueError: a teacher without BatchNormalization layers, `competition_weight > 0`
            without a student, inputs that are not images, bad arguments; all before any work.

    Example:
        >>> synthetic = deep_inversion(bn_teacher, 10000, batch_size=256, steps=2000, seed=0)
        >>> distiller = keras_kd.Distiller(bn_teacher, student, student_loss_weight=0.0)
        >>> distiller.compile("adam")
        >>> distiller.fit(synthetic.dataset(128), epochs=20)

    Reference:
        Yin, Molchanov, Li, Alvarez, Mallya, Hoiem, Jha & Kautz, "Dreaming to Distill:
        Data-free Knowledge Transfer via DeepInversion", CVPR 2020 (NVlabs/DeepInversion,
        `cifar10/deepinversion_cifar10.py`). `min_x CE(t(x), y) + R_prior(x) + a_f R_feature(x)
        [+ a_c (1 - JS(p_T(x), p_S(x)))]`.
    """
    bn_layers = _check_bn_teacher(teacher)
    input_shape = tuple(int(d) for d in teacher.inputs[0].shape[1:])
    if len(input_shape) != 3 or any(d is None for d in input_shape):
        raise ValueError(f"DeepInversion optimises images (height, width, channels); the "
                         f"teacher '{teacher.name}' takes inputs of shape {input_shape}.")
    weights = {}
    for key, value in (("bn_weight", bn_weight), ("first_bn_multiplier", first_bn_multiplier),
                       ("tv_l2_weight", tv_l2_weight), ("tv_l1_weight", tv_l1_weight),
                       ("l2_weight", l2_weight), ("competition_weight", competition_weight)):
        weights[key] = validation.non_negative(key, value)
    jitter = validation.non_negative_int("jitter", jitter)
    flip = validation.one_of("flip", flip, (False, True))
    temperature = validation.positive("competition_temperature", competition_temperature)
    initial_std = validation.positive("initial_std", initial_std)
    batch_size = validation.positive_int("batch_size", batch_size)
    steps = validation.positive_int("steps", steps)
    if weights["competition_weight"] > 0:
        if not isinstance(student, keras.Model):
            raise ValueError(
                f"competition_weight={weights['competition_weight']} needs the student "
                f"(Adaptive DeepInversion), got student={student!r}. Pass student=..., or "
                "competition_weight=0 for plain DeepInversion."
            )
    elif student is not None and not isinstance(student, keras.Model):
        raise TypeError(f"student must be a keras.Model or None, got {type(student)!r}.")

    info = FeatureExtractor(teacher, (LOGITS,), "teacher").info
    if info.activation == "sigmoid":
        raise ValueError(f"DeepInversion's cross-entropy needs a softmax classifier; the "
                         f"teacher '{teacher.name}' ends in a sigmoid.")
    # One call gives the output and the *input* of every BN layer (its batch statistics).
    features = keras.Model(teacher.input, [teacher.outputs[0]] + [bn.input for bn in bn_layers],
                           name=f"{teacher.name}_bn_inputs")
    student_features = (FeatureExtractor(student, (LOGITS,), "student")
                        if weights["competition_weight"] > 0 else None)
    num_classes = int(teacher.outputs[0].shape[-1])
    multipliers = [weights["first_bn_multiplier"]] + [1.0] * (len(bn_layers) - 1)
    step_index = tf.Variable(0, dtype=tf.int64, trainable=False)

    def objective(x, targets):
        i = step_index.assign_add(1) - 1
        shift = tf.cast(targets["offsets"][i], tf.int32)
        x_jit = tf.roll(x, shift=shift, axis=[1, 2])
        if flip:
            x_jit = tf.where(targets["flips"][i] > 0.5, tf.reverse(x_jit, axis=[2]), x_jit)
        outputs = features(x_jit, training=False)
        logits = ops.cast(outputs[0], "float32")
        if info.activation == "softmax":  # log-probabilities: logits up to a shift
            logits = ops.log(ops.maximum(logits, 1e-30))
        labels = ops.cast(targets["labels"], "int32")
        ce = ops.mean(keras.losses.sparse_categorical_crossentropy(
            labels, logits, from_logits=True))
        bn = 0.0
        for m, bn_layer, bn_input in zip(multipliers, bn_layers, outputs[1:]):
            bn = bn + m * batch_norm_statistics_distance(
                bn_input, bn_layer.moving_mean, bn_layer.moving_variance, _bn_axis(bn_layer))
        terms = {"ce": ce, "bn": bn}
        loss = ce + weights["bn_weight"] * bn
        if weights["tv_l2_weight"] or weights["tv_l1_weight"]:
            tv2 = total_variation_l2(x_jit)
            tv1 = total_variation_l1(x_jit)
            loss = loss + weights["tv_l2_weight"] * tv2 + weights["tv_l1_weight"] * tv1
            terms["tv_l2"] = tv2
        if weights["l2_weight"]:
            loss = loss + weights["l2_weight"] * image_l2(x_jit)
        if student_features is not None:
            _, s = student_features(x_jit, training=False)
            compete = competition_loss(logits, s[LOGITS], temperature)
            loss = loss + weights["competition_weight"] * compete
            terms["competition"] = compete
        return loss, terms

    def start_batch(rng: np.random.Generator, index: int) -> BatchStart:
        step_index.assign(0)
        classes = balanced_classes(num_classes, batch_size, index, rng)
        x0 = rng.normal(0.0, initial_std, size=(batch_size, *input_shape)).astype(np.float32)
        offsets = rng.integers(-jitter, jitter + 1, size=(steps, 2)).astype(np.float32)
        flips = (rng.random(steps) > 0.5).astype(np.float32)
        return BatchStart(x=x0, y=classes, targets={
            "labels": classes.astype(np.float32), "offsets": offsets, "flips": flips})

    fingerprint = dict(weights, teacher_sha256=weights_sha256(teacher), jitter=jitter,
                       flip=flip, competition_temperature=temperature,
                       initial_std=initial_std,
                       student_sha256=(weights_sha256(student)
                                       if student_features is not None else None))
    return invert(objective, start_batch, input_shape, num_samples, batch_size, steps,
                  learning_rate, seed=seed, input_range=input_range,
                  checkpoint_dir=checkpoint_dir, fingerprint=fingerprint,
                  time_limit=time_limit, verbose=verbose, name="deep_inversion")


__all__ = [
    "batch_norm_layers",
    "batch_norm_statistics_distance",
    "competition_loss",
    "deep_inversion",
    "image_l2",
    "total_variation_l1",
    "total_variation_l2",
]
