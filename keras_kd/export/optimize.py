"""Quantization-aware and pruned distillation with tensorflow-model-optimization (tfmot).

tfmot only works on tf_keras (Keras 2) models, so the Keras 3 student is rebuilt with
`to_tf_keras`, wrapped by tfmot (`quantize_model` or `prune_low_magnitude`) and fine-tuned on the
knowledge-distillation loss against **cached teacher logits**: the teacher stays a Keras 3 model
and runs once, before training. The result converts to full-int8 TFLite with `to_tflite`.

tfmot is imported only here, when one of these functions is first called. Importing it sets
`TF_USE_LEGACY_KERAS=1` and then touches `tf.keras`, which would bind `tf.keras` to tf_keras for the
whole process; `_import_tfmot` resolves `tf.keras` first (so it keeps meaning Keras 3) and restores
the environment variable afterwards.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from keras_kd import validation
from keras_kd.distiller import Distiller
from keras_kd.export.tf_keras_bridge import to_tf_keras
from keras_kd.features import FeatureExtractor, output_info
from keras_kd.losses.base import LOGITS
from keras_kd.losses.functional import soft_target_kl

_LEGACY_KERAS_ENV = "TF_USE_LEGACY_KERAS"


def _import_tfmot():
    """Imports tfmot without changing what `tf.keras` means or leaving the env var flipped."""
    previous = os.environ.get(_LEGACY_KERAS_ENV)
    # Binds the lazily loaded tf.keras now, under the user's environment (Keras 3 by default).
    _ = tf.keras.layers
    try:
        import tensorflow_model_optimization as tfmot  # lazy on purpose, see module docstring
    finally:
        if previous is None:
            os.environ.pop(_LEGACY_KERAS_ENV, None)
        else:
            os.environ[_LEGACY_KERAS_ENV] = previous
    return tfmot


def distillation_loss_fn(student_loss_weight: float = 0.1, temperature: float = 4.0):
    """A tf_keras loss `(y_packed, student_logits) -> (batch,)` for distilling from cached logits.

    `y_packed[:, 0]` is the class id and `y_packed[:, 1:]` the teacher logits (see
    `pack_targets`), so a plain tf_keras `fit` - and tfmot's callbacks - drive the training.

    Args:
        student_loss_weight: `alpha`, weight of the hard-label cross-entropy.
        temperature: softening temperature `T`.

    Returns:
        A function computing `alpha * CE(y, s) + (1 - alpha) * T^2 * KL(softmax(t/T) ||
        softmax(s/T))` per example, with `keras_kd.losses.functional.soft_target_kl`.

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
    """
    alpha = validation.unit_interval("student_loss_weight", student_loss_weight)
    temperature = validation.positive("temperature", temperature)

    def kd_loss(y_packed, student_logits):
        y_packed = tf.cast(y_packed, tf.float32)
        student_logits = tf.cast(student_logits, tf.float32)
        labels = tf.cast(y_packed[:, 0], tf.int32)
        hard = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, student_logits)
        soft = soft_target_kl(y_packed[:, 1:], student_logits, temperature)
        return alpha * hard + (1.0 - alpha) * soft

    return kd_loss


def pack_targets(labels, teacher_logits) -> np.ndarray:
    """`(n,)` class ids and `(n, classes)` teacher logits -> `(n, 1 + classes)` float32."""
    labels = np.asarray(labels).reshape(-1, 1).astype(np.float32)
    teacher_logits = np.asarray(teacher_logits, dtype=np.float32)
    if teacher_logits.ndim != 2 or len(teacher_logits) != len(labels):
        raise ValueError(
            f"teacher_logits must be (n, classes) with n={len(labels)} labels, got "
            f"{teacher_logits.shape}."
        )
    return np.concatenate([labels, teacher_logits], axis=1)


def teacher_logits_of(teacher: keras.Model, x, batch_size: int = 256) -> np.ndarray:
    """Runs the Keras 3 teacher once and returns its logits (a final softmax is undone exactly).

    Args:
        teacher: the teacher model.
        x: inputs `(n, ...)`.
        batch_size: batch size of the teacher pass.

    Returns:
        `(n, classes)` float32 logits, as `keras_kd.cache_teacher_logits` stores them.
    """
    batch_size = validation.positive_int("batch_size", batch_size)
    extractor = FeatureExtractor(teacher, (LOGITS,), "teacher")
    x = np.asarray(x, dtype=np.float32)
    parts = [
        np.asarray(extractor.logits(x[i : i + batch_size]))
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(parts).astype(np.float32)


def _target_sparsity(target_sparsity) -> float:
    """`target_sparsity` as a float in the open interval (0, 1), else `TypeError`/`ValueError`."""
    sparsity = validation.real_scalar("target_sparsity", target_sparsity)
    if not 0.0 < sparsity < 1.0:
        raise ValueError(
            f"target_sparsity must be a real number in (0, 1), got {target_sparsity!r}. Pass "
            "the final fraction of zero weights, e.g. 0.5."
        )
    return sparsity


def _check_fit_arguments(student_loss_weight, temperature, epochs, batch_size, learning_rate):
    """Refuses bad training arguments before tfmot is imported or the teacher runs."""
    distillation_loss_fn(student_loss_weight, temperature)
    validation.positive_int("epochs", epochs)
    validation.positive_int("batch_size", batch_size)
    validation.positive("learning_rate", learning_rate)


def _prepare(student, teacher, teacher_logits, x, y):
    if isinstance(student, Distiller):
        teacher = student.teacher if teacher is None and teacher_logits is None else teacher
        student = student.student
    if not isinstance(student, keras.Model):
        raise TypeError(f"student must be a Keras 3 keras.Model, got {type(student)!r}.")
    if output_info(student).activation is not None:
        raise ValueError(
            f"student {student.name!r} ends with a softmax; distillation here needs a student "
            "that outputs logits."
        )
    if (teacher is None) == (teacher_logits is None):
        raise ValueError("Pass exactly one of teacher (a Keras 3 model) or teacher_logits.")
    x = np.asarray(x, dtype=np.float32)
    if teacher_logits is None:
        teacher_logits = teacher_logits_of(teacher, x)
    return to_tf_keras(student), x, pack_targets(y, teacher_logits)


def _fit(model, x, packed, callbacks, student_loss_weight, temperature, epochs, batch_size,
         learning_rate, verbose):
    import tf_keras  # lazy, like tfmot

    model.compile(
        optimizer=tf_keras.optimizers.Adam(learning_rate),
        loss=distillation_loss_fn(student_loss_weight, temperature),
    )
    model.fit(x, packed, batch_size=batch_size, epochs=epochs, callbacks=callbacks,
              verbose=verbose, shuffle=True)
    return model


def _short_name(variable) -> str:
    return variable.name.split(":")[0].split("/")[-1]


def calibrate_activation_ranges(
    qat_model, float_model, x, batch_size: int = 128, num_batches: int = 50
) -> int:
    """Sets the activation ranges of a tfmot QAT model from the float model's activations.

    tfmot's `MovingAverageQuantizer` starts every activation range at [-6, 6] and moves it with an
    EMA of decay 0.999, so after a few hundred fine-tuning steps the ranges are still mostly that
    guess: larger activations and logits are clipped and accuracy drops. Here each range of a
    wrapped layer `quant_<name>` (its `post_activation` / `output` min and max) is set to the
    average over `num_batches` batches of `min(batch, 0)` / `max(batch, 0)` of layer `<name>` in
    the float model - the value the EMA converges to - before fine-tuning starts.

    Args:
        qat_model: the output of `tfmot.quantization.keras.quantize_model(float_model)`.
        float_model: the tf_keras model that was quantized.
        x: training inputs.
        batch_size: examples per batch.
        num_batches: batches averaged (drawn in a fixed random order, cycling).

    Returns:
        The number of range variables set.
    """
    import tf_keras  # lazy, like tfmot

    batch_size = validation.positive_int("batch_size", batch_size)
    num_batches = validation.non_negative_int("num_batches", num_batches)
    targets = {}  # float layer name -> [(variable, "min" | "max")]
    for wrapper in qat_model.layers:
        if not wrapper.name.startswith("quant_"):
            continue
        for variable in wrapper.non_trainable_weights:
            name = _short_name(variable)
            for kind in ("post_activation", "output"):
                if name in (f"{kind}_min", f"{kind}_max"):
                    targets.setdefault(wrapper.name[len("quant_"):], []).append(
                        (variable, name.rsplit("_", 1)[1])
                    )
    names = [n for n in targets if n in {layer.name for layer in float_model.layers}]
    if not names or num_batches < 1:
        return 0
    probe = tf_keras.Model(float_model.inputs, [float_model.get_layer(n).output for n in names])
    order = np.random.default_rng(0).permutation(len(x))
    lows, highs = np.zeros(len(names)), np.zeros(len(names))
    for i in range(num_batches):
        index = order[np.arange(i * batch_size, (i + 1) * batch_size) % len(x)]
        outputs = probe(x[index], training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for j, out in enumerate(outputs):
            lows[j] += min(float(tf.reduce_min(out)), 0.0) / num_batches
            highs[j] += max(float(tf.reduce_max(out)), 0.0) / num_batches
    count = 0
    for j, name in enumerate(names):
        for variable, end in targets[name]:
            value = lows[j] if end == "min" else highs[j]
            variable.assign(np.full(variable.shape, value, dtype=np.float32))
            count += 1
    return count


def quantization_aware_distillation(
    student,
    x,
    y,
    teacher: keras.Model | None = None,
    teacher_logits=None,
    student_loss_weight: float = 0.1,
    temperature: float = 4.0,
    epochs: int = 1,
    batch_size: int = 128,
    learning_rate: float = 1e-4,
    range_calibration_batches: int = 50,
    verbose: int = 0,
):
    """Fine-tunes a student with fake-quantization (QAT) while it learns the teacher's soft targets.

    Args:
        student: the trained Keras 3 student (logits output), or a `keras_kd.Distiller` (its
            student, and its teacher unless `teacher` / `teacher_logits` is given).
        x: training inputs `(n, ...)` (float32 arrays).
        y: class ids `(n,)`.
        teacher: the Keras 3 teacher; run once over `x` to cache its logits.
        teacher_logits: `(n, classes)` cached teacher logits instead of `teacher`.
        student_loss_weight: `alpha` of the KD loss.
        temperature: `T` of the KD loss.
        epochs, batch_size, learning_rate: of the tf_keras `fit` (Adam).
        range_calibration_batches: batches of the float student used by
            `calibrate_activation_ranges` to set the activation ranges before fine-tuning (0
            keeps tfmot's [-6, 6] initial ranges).
        verbose: `fit` verbosity.

    Returns:
        The quantization-aware tf_keras model; export it with
        `to_tflite(model, path, "int8", representative_data=...)`.

    Example:
        >>> qat = quantization_aware_distillation(student, x_train, y_train, teacher=teacher)
        >>> to_tflite(qat, "qat_int8.tflite", "int8", representative_data=x_train[:300])

    Reference:
        Jacob et al., CVPR 2018 (fake quantization in training); Hinton et al. 2015 (KD loss
        `alpha * CE + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))`).
    """
    _check_fit_arguments(student_loss_weight, temperature, epochs, batch_size, learning_rate)
    validation.non_negative_int("range_calibration_batches", range_calibration_batches)
    tfmot = _import_tfmot()
    model, x, packed = _prepare(student, teacher, teacher_logits, x, y)
    try:
        qat = tfmot.quantization.keras.quantize_model(model)
    except RuntimeError as err:
        raise ValueError(
            f"tensorflow-model-optimization cannot quantize this student ({err}). Its default "
            "scheme supports standard layers, with BatchNormalization only right after a "
            "convolution."
        ) from err
    calibrate_activation_ranges(qat, model, x, batch_size, range_calibration_batches)
    return _fit(qat, x, packed, [], student_loss_weight, temperature, epochs, batch_size,
                learning_rate, verbose)


def pruning_distillation(
    student,
    x,
    y,
    teacher: keras.Model | None = None,
    teacher_logits=None,
    target_sparsity: float = 0.5,
    student_loss_weight: float = 0.1,
    temperature: float = 4.0,
    epochs: int = 1,
    batch_size: int = 128,
    learning_rate: float = 1e-4,
    verbose: int = 0,
):
    """Magnitude-prunes a student to `target_sparsity` while it learns the teacher's soft targets.

    Sparsity ramps polynomially from 0 to `target_sparsity` over the first 70% of the steps
    (`UpdatePruningStep` drives the schedule), then the pruning wrappers are stripped.

    Args:
        student, x, y, teacher, teacher_logits, student_loss_weight, temperature, epochs,
            batch_size, learning_rate, verbose: as in `quantization_aware_distillation`.
        target_sparsity: final fraction of zero weights in every Conv / Dense kernel.

    Returns:
        The stripped tf_keras model (plain layers, pruned weights are zeros); export it with
        `to_tflite(model, path, "int8", representative_data=...)`.

    Reference:
        Zhu & Gupta, "To prune, or not to prune", 2017: `s_t = s_f * (1 - (1 - t/n)^3)`.
    """
    sparsity = _target_sparsity(target_sparsity)
    _check_fit_arguments(student_loss_weight, temperature, epochs, batch_size, learning_rate)
    tfmot = _import_tfmot()
    model, x, packed = _prepare(student, teacher, teacher_logits, x, y)
    steps = epochs * int(np.ceil(len(x) / batch_size))
    end_step = max(1, int(0.7 * steps))
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=sparsity,
        begin_step=0,
        end_step=end_step,
        frequency=max(1, min(100, end_step // 10)),
    )
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    _fit(pruned, x, packed, [tfmot.sparsity.keras.UpdatePruningStep()], student_loss_weight,
         temperature, epochs, batch_size, learning_rate, verbose)
    return tfmot.sparsity.keras.strip_pruning(pruned)


def kernel_sparsity(model) -> float:
    """Fraction of exact zeros over the kernels (weights with rank >= 2) of a model."""
    kernels = [np.asarray(w) for w in model.get_weights() if np.ndim(w) >= 2]
    if not kernels:
        raise ValueError("model has no kernels.")
    return float(sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels))


__all__ = [
    "calibrate_activation_ranges",
    "distillation_loss_fn",
    "kernel_sparsity",
    "pack_targets",
    "pruning_distillation",
    "quantization_aware_distillation",
    "teacher_logits_of",
]
