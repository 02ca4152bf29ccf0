"""`to_tflite`: LiteRT outputs vs Keras per quantization mode on real MNIST, int8 integer path."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_kd import Distiller
from keras_kd.export import float_compute_tensors, tflite_predict, to_tflite

# Stated tolerances on max |LiteRT logit - Keras logit| over 2000 real MNIST test images, as a
# fraction of the Keras logit range (max - min over the set). float32 is absolute (1e-4).
RELATIVE_TOLERANCE = {"float16": 0.002, "dynamic": 0.02, "int8": 0.08, "int8_float_io": 0.08}
MIN_AGREEMENT = 0.99


@pytest.fixture(scope="module")
def keras_logits(student, mnist):
    return np.asarray(student.predict(mnist[2], verbose=0))


def test_float32_equals_keras(tflite_files, keras_logits, mnist):
    out = tflite_predict(tflite_files["none"], mnist[2])
    np.testing.assert_allclose(out, keras_logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", sorted(RELATIVE_TOLERANCE))
def test_quantized_variants_agree_with_keras(variant, tflite_files, keras_logits, mnist):
    out = tflite_predict(tflite_files[variant], mnist[2])
    logit_range = float(keras_logits.max() - keras_logits.min())
    max_diff = float(np.abs(out - keras_logits).max())
    agreement = float(np.mean(out.argmax(-1) == keras_logits.argmax(-1)))
    assert agreement >= MIN_AGREEMENT, (variant, agreement)
    assert max_diff <= RELATIVE_TOLERANCE[variant] * logit_range, (variant, max_diff, logit_range)
    # Quantization really happened: the outputs are not bit-identical to float32.
    assert max_diff > 1e-6


@pytest.mark.parametrize("variant", ["int8", "int8_float_io"])
def test_int8_compute_path_is_integer(variant, tflite_files):
    assert float_compute_tensors(tflite_files[variant]) == []


def test_int8_io_tensors_are_int8(tflite_files):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite_files["int8"]))
    tensors = interpreter.get_tensor_details()
    assert {np.dtype(t["dtype"]).name for t in tensors} == {"int8", "int32"}
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8


def test_float_files_are_not_integer(tflite_files):
    # The integer-path check can fail: float32 and dynamic-range files have float compute.
    assert float_compute_tensors(tflite_files["none"])
    assert float_compute_tensors(tflite_files["dynamic"])


def test_quantized_files_are_smaller(tflite_files):
    size = {k: p.stat().st_size for k, p in tflite_files.items()}
    assert size["float16"] < 0.6 * size["none"]
    assert size["dynamic"] <= 0.35 * size["none"]
    assert size["int8"] <= 0.35 * size["none"]


def test_distiller_exports_only_the_student(student, tmp_path, mnist):
    teacher = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)], name="t"
    )
    distiller = Distiller(teacher, student)
    path = to_tflite(distiller, tmp_path / "d.tflite")
    out = tflite_predict(path, mnist[2][:64])
    np.testing.assert_allclose(out, student.predict(mnist[2][:64], verbose=0), atol=1e-4)
    teacher_out = teacher.predict(mnist[2][:64], verbose=0)
    assert np.abs(out - teacher_out).max() > 1e-2


def test_representative_dataset_gives_the_same_file_as_arrays(student, mnist, tmp_path,
                                                              tflite_files):
    import tensorflow as tf

    # The fixture calibrated on the array x_train[:300]; a batched (x, y) dataset of the same
    # examples must give a byte-identical file.
    dataset = tf.data.Dataset.from_tensor_slices((mnist[0][:300], mnist[1][:300])).batch(64)
    path = to_tflite(student, tmp_path / "b.tflite", "int8", representative_data=dataset)
    assert path.read_bytes() == tflite_files["int8_float_io"].read_bytes()


def test_errors(student, tmp_path, mnist):
    with pytest.raises(ValueError, match="representative_data"):
        to_tflite(student, tmp_path / "x.tflite", "int8")
    with pytest.raises(ValueError, match="quantization must be one of"):
        to_tflite(student, tmp_path / "x.tflite", "int4")
    with pytest.raises(ValueError, match="int8_io"):
        to_tflite(student, tmp_path / "x.tflite", "float16", int8_io=True)
    with pytest.raises(ValueError, match=r"shape \(28, 28, 1\)"):
        to_tflite(student, tmp_path / "x.tflite", "int8", representative_data=np.zeros((4, 5)))
    with pytest.raises(TypeError, match="model must be"):
        to_tflite("student.keras", tmp_path / "x.tflite")
