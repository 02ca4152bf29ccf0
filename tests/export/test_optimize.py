"""QAT / pruned distillation through tfmot: KD loss, int8 export, sparsity, `tf.keras` untouched."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_kd.export import (
    calibrate_activation_ranges,
    distillation_loss_fn,
    evaluate_tflite,
    float_compute_tensors,
    kernel_sparsity,
    pack_targets,
    pruning_distillation,
    quantization_aware_distillation,
    teacher_logits_of,
    to_tf_keras,
    to_tflite,
)
from keras_kd.losses.functional import soft_target_kl

NUM_FINETUNE = 3000


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_kd_loss(labels, t, s, alpha, temperature):
    """alpha * CE(y, s) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T)), float64."""
    ce = -np_log_softmax(s)[np.arange(len(labels)), labels]
    log_p, log_q = np_log_softmax(t / temperature), np_log_softmax(s / temperature)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
    return alpha * ce + (1 - alpha) * temperature**2 * kl


def test_distillation_loss_matches_numpy_reference():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    t, s = rng.normal(0, 3, (6, 5)), rng.normal(0, 3, (6, 5))
    labels = rng.integers(0, 5, 6)
    loss = distillation_loss_fn(student_loss_weight=0.3, temperature=2.5)
    got = loss(tf.constant(pack_targets(labels, t)), tf.constant(s, tf.float32)).numpy()
    np.testing.assert_allclose(got, np_kd_loss(labels, t, s, 0.3, 2.5), atol=1e-5)
    # The soft part is keras_kd's own soft_target_kl evaluated on tf tensors.
    soft = distillation_loss_fn(0.0, 2.5)(tf.constant(pack_targets(labels, t)), tf.constant(s))
    np.testing.assert_allclose(soft.numpy(), np.asarray(soft_target_kl(t, s, 2.5)), atol=1e-5)


def test_pack_targets_and_argument_errors(student):
    packed = pack_targets([3, 1], [[0.0, 1.0], [2.0, 3.0]])
    np.testing.assert_array_equal(packed, [[3, 0, 1], [1, 2, 3]])
    with pytest.raises(ValueError, match="teacher_logits must be"):
        pack_targets([1, 2, 3], np.zeros((2, 4)))
    with pytest.raises(ValueError, match="student_loss_weight"):
        distillation_loss_fn(1.5)
    x, y = np.zeros((4, 28, 28, 1), "float32"), np.zeros(4, "int64")
    with pytest.raises(ValueError, match="exactly one of teacher"):
        quantization_aware_distillation(student, x, y)
    softmax_student = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10, "softmax")]
    )
    with pytest.raises(ValueError, match="ends with a softmax"):
        quantization_aware_distillation(softmax_student, x, y, teacher_logits=np.zeros((4, 10)))


def test_teacher_logits_undo_a_final_softmax():
    inputs = keras.Input((4,))
    logits = keras.layers.Dense(3)(inputs)
    with_softmax = keras.Model(inputs, keras.layers.Softmax()(logits))
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    np.testing.assert_allclose(
        teacher_logits_of(with_softmax, x), keras.Model(inputs, logits).predict(x, verbose=0),
        atol=1e-5,
    )


def test_calibration_sets_ranges_from_float_activations(student, mnist):
    from keras_kd.export.optimize import _import_tfmot

    tfmot = _import_tfmot()
    x = mnist[0][:256]
    float_model = to_tf_keras(student)
    qat = tfmot.quantization.keras.quantize_model(float_model)
    # tfmot's initial guess, which short fine-tuning barely moves (EMA decay 0.999).
    logit_range = {v.name.split("/")[-1][:-2]: v for v in qat.layers[-1].non_trainable_weights}
    assert float(logit_range["post_activation_max"].numpy()) == 6.0
    count = calibrate_activation_ranges(qat, float_model, x, batch_size=256, num_batches=1)
    assert count == 8  # (min, max) of: ReLU output, conv2d_1, dense, dense_1 (logits)
    logits = student.predict(x, verbose=0)
    np.testing.assert_allclose(logit_range["post_activation_min"].numpy(),
                               min(logits.min(), 0.0), rtol=1e-5)
    np.testing.assert_allclose(logit_range["post_activation_max"].numpy(),
                               max(logits.max(), 0.0), rtol=1e-5)


@pytest.fixture(scope="module")
def soft_targets(student, mnist):
    # A stand-in teacher signal: the float student's own logits (self-distillation), cached.
    return student.predict(mnist[0][:NUM_FINETUNE], verbose=0)


def test_qat_distillation_exports_to_integer_int8(student, mnist, soft_targets, tmp_path):
    x_train, y_train, x_test, y_test = mnist
    keras.utils.set_random_seed(3)
    qat = quantization_aware_distillation(
        student, x_train[:NUM_FINETUNE], y_train[:NUM_FINETUNE], teacher_logits=soft_targets,
        epochs=1, batch_size=64,
    )
    assert type(qat).__module__.startswith("tf_keras")
    assert any("quant" in type(layer).__name__.lower() for layer in qat.layers)
    path = to_tflite(qat, tmp_path / "qat.tflite", "int8", representative_data=x_train[:200],
                     int8_io=True)
    assert float_compute_tensors(path) == []
    report = evaluate_tflite(path, (x_test, y_test), reference_model=student, latency_repeats=2)
    float_accuracy = float(np.mean(student.predict(x_test, verbose=0).argmax(-1) == y_test))
    assert report.accuracy >= float_accuracy - 0.01, (report.accuracy, float_accuracy)
    assert report.agreement >= 0.97


def test_pruning_distillation_reaches_half_sparsity(student, mnist, soft_targets, tmp_path):
    x_train, y_train, x_test, y_test = mnist
    pruned = pruning_distillation(
        student, x_train[:NUM_FINETUNE], y_train[:NUM_FINETUNE], teacher_logits=soft_targets,
        target_sparsity=0.5, epochs=1, batch_size=64,
    )
    assert not any("prune" in type(layer).__name__.lower() for layer in pruned.layers)
    assert kernel_sparsity(pruned) == pytest.approx(0.5, abs=0.01)
    assert kernel_sparsity(student) < 0.01
    path = to_tflite(pruned, tmp_path / "pruned.tflite", "int8",
                     representative_data=x_train[:200], int8_io=True)
    assert float_compute_tensors(path) == []
    report = evaluate_tflite(path, (x_test, y_test), latency_repeats=2)
    assert report.accuracy >= 0.85


_IN_SUBPROCESS = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import keras, tensorflow as tf
    import keras_kd, keras_kd.export
    lazy = ("tensorflow_model_optimization", "tf_keras", "ai_edge_litert")
    assert not [m for m in sys.modules if m.split(".")[0] in lazy], "imported eagerly"
    student = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3),
                                keras.layers.Flatten(), keras.layers.Dense(3)])
    x = np.random.rand(32, 6, 6, 1).astype("float32")
    y = np.random.randint(0, 3, 32)
    qat = keras_kd.export.quantization_aware_distillation(
        student, x, y, teacher_logits=np.random.rand(32, 3), epochs=1, batch_size=16)
    keras_kd.export.to_tflite(qat, sys.argv[1], "int8", representative_data=x)
    assert "tensorflow_model_optimization" in sys.modules
    assert "TF_USE_LEGACY_KERAS" not in os.environ, os.environ["TF_USE_LEGACY_KERAS"]
    assert tf.keras.version().startswith("3."), tf.keras.version()
    assert tf.keras.layers.Dense is keras.layers.Dense
    model = tf.keras.Sequential([tf.keras.Input((6, 6, 1)), tf.keras.layers.Flatten(),
                                 tf.keras.layers.Dense(3)])
    assert isinstance(model, keras.Model)
    model.compile("sgd", "mse")
    model.fit(x, np.zeros((32, 3)), verbose=0)
    print("KERAS3_OK")
    """
)

_UNGUARDED = textwrap.dedent(
    """
    import tensorflow as tf
    import tensorflow_model_optimization
    print(type(tf.keras.layers.Dense).__module__, tf.keras.layers.Dense.__module__)
    """
)


@pytest.fixture(scope="module")
def fresh_processes(tmp_path_factory):
    """Starts both fresh-process checks at once (imports dominate their time)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    out = tmp_path_factory.mktemp("fresh") / "q.tflite"

    def start(code, *args):
        return subprocess.Popen([sys.executable, "-c", code, *args], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    processes = {"guarded": start(_IN_SUBPROCESS, str(out)), "unguarded": start(_UNGUARDED)}
    yield processes, out
    for process in processes.values():
        if process.poll() is None:
            process.kill()


def test_qat_path_leaves_tf_keras_as_keras3(fresh_processes):
    # In a fresh process: nothing lazy is imported by `import keras_kd`, and after the QAT path
    # `tf.keras` / `keras` are still Keras 3 and TF_USE_LEGACY_KERAS is unset again.
    processes, out = fresh_processes
    stdout, stderr = processes["guarded"].communicate(timeout=300)
    assert "KERAS3_OK" in stdout, stderr[-3000:]
    assert out.stat().st_size > 0


def test_unguarded_tfmot_import_does_switch_tf_keras(fresh_processes):
    # Control: the hazard the guard removes is real - a bare tfmot import rebinds tf.keras.
    processes, _ = fresh_processes
    stdout, stderr = processes["unguarded"].communicate(timeout=300)
    assert processes["unguarded"].returncode == 0, stderr[-3000:]
    assert "tf_keras" in stdout, stdout
