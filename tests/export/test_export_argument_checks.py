"""Export functions refuse bad numbers before importing tfmot, running a model or writing files."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_kd.export import (
    deployment_report,
    distillation_loss_fn,
    evaluate_tflite,
    optimize,
    pruning_distillation,
    quantization_aware_distillation,
    teacher_logits_of,
    tflite_predict,
    to_tflite,
)

NAN, INF = float("nan"), float("inf")


def small_cnn():
    """An untrained logits model: every call here is refused before it would run."""
    return keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )


@pytest.fixture
def no_tfmot(monkeypatch):
    """Fails the test if an argument is checked only after tfmot was imported."""
    def refuse():
        raise AssertionError("tfmot was imported before the arguments were checked")

    monkeypatch.setattr(optimize, "_import_tfmot", refuse)


def _data():
    return np.zeros((4, 28, 28, 1), "float32"), np.zeros(4, "int64"), np.zeros((4, 10), "float32")


def test_distillation_loss_fn_refuses_nan_inf_and_bools():
    for alpha in (NAN, INF, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"student_loss_weight must be a real number in \[0"):
            distillation_loss_fn(alpha)
    for temperature in (NAN, INF, 0.0):
        with pytest.raises(ValueError, match="temperature must be a finite real number > 0"):
            distillation_loss_fn(0.1, temperature)
    with pytest.raises(TypeError, match="student_loss_weight"):
        distillation_loss_fn(True)
    distillation_loss_fn(np.float32(0.5), np.int64(2))


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"epochs": 0}, ValueError, "epochs must be a positive integer, got 0"),
        ({"epochs": 1.0}, TypeError, "epochs must be a positive integer, got 1.0"),
        ({"batch_size": True}, TypeError, "batch_size must be a positive integer, got True"),
        ({"learning_rate": NAN}, ValueError, "learning_rate must be a finite real number > 0"),
        ({"temperature": INF}, ValueError, "temperature must be a finite real number > 0"),
        ({"student_loss_weight": 2.0}, ValueError, "student_loss_weight must be a real number"),
        ({"range_calibration_batches": -1}, ValueError,
         "range_calibration_batches must be a non-negative integer"),
    ],
)
def test_quantization_aware_distillation_checks_first(no_tfmot, kwargs, error, pattern):
    x, y, logits = _data()
    with pytest.raises(error, match=pattern):
        quantization_aware_distillation(small_cnn(), x, y, teacher_logits=logits, **kwargs)


@pytest.mark.parametrize("bad, error", [(0.0, ValueError), (1.0, ValueError), (NAN, ValueError),
                                        (INF, ValueError), ("0.5", TypeError)])
def test_pruning_distillation_target_sparsity(no_tfmot, bad, error):
    x, y, logits = _data()
    with pytest.raises(error, match="target_sparsity must be a"):
        pruning_distillation(small_cnn(), x, y, teacher_logits=logits, target_sparsity=bad)
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        pruning_distillation(small_cnn(), x, y, teacher_logits=logits, epochs=0)


def test_deployment_report_writes_nothing_for_bad_arguments(tmp_path):
    x, y, _ = _data()
    out = tmp_path / "deploy"
    for kwargs, error in (({"target_sparsity": 1.0}, ValueError), ({"num_threads": 0}, ValueError),
                          ({"qat_epochs": 1.5}, TypeError), ({"learning_rate": INF}, ValueError),
                          ({"num_calibration_examples": None}, TypeError)):
        with pytest.raises(error):
            deployment_report(small_cnn(), x, y, x, y, out, **kwargs)
    assert not out.exists()


def test_tflite_arguments(tmp_path):
    model = small_cnn()
    with pytest.raises(ValueError, match=r"quantization must be one of \('none', 'float16', "
                                         r"'dynamic', 'int8'\), got 'int4'\."):
        to_tflite(model, tmp_path / "x.tflite", "int4")
    with pytest.raises(TypeError, match="quantization must be one of"):
        to_tflite(model, tmp_path / "x.tflite", None)
    with pytest.raises(TypeError, match="num_calibration_examples must be a positive integer"):
        to_tflite(model, tmp_path / "x.tflite", num_calibration_examples=True)
    assert not (tmp_path / "x.tflite").exists()
    x = np.zeros((2, 28, 28, 1), "float32")
    missing = tmp_path / "missing.tflite"  # refused before the file is opened
    with pytest.raises(TypeError, match="num_threads must be a positive integer, got 1.0"):
        tflite_predict(missing, x, num_threads=1.0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        tflite_predict(missing, x, batch_size=0)
    with pytest.raises(ValueError, match="latency_repeats must be a positive integer, got 0"):
        evaluate_tflite(missing, x, labels=np.zeros(2, "int64"), latency_repeats=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        teacher_logits_of(model, x, batch_size=0)
