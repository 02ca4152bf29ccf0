"""`evaluate_tflite` / `tflite_predict` with the LiteRT interpreter on real MNIST."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from keras_kd.export import evaluate_tflite, median_latency_ms, tflite_predict


def test_report_matches_a_direct_computation(tflite_files, student, mnist):
    _, _, x_test, y_test = mnist
    path = tflite_files["int8"]
    report = evaluate_tflite(path, (x_test, y_test), reference_model=student, latency_repeats=2)
    out = tflite_predict(path, x_test)
    keras_out = student.predict(x_test, verbose=0)
    assert report.num_examples == len(x_test)
    assert report.accuracy == pytest.approx(np.mean(out.argmax(-1) == y_test))
    assert report.reference_accuracy == pytest.approx(np.mean(keras_out.argmax(-1) == y_test))
    assert report.agreement == pytest.approx(np.mean(out.argmax(-1) == keras_out.argmax(-1)))
    assert report.max_abs_diff == pytest.approx(np.abs(out - keras_out).max(), rel=1e-6)
    assert report.size_bytes == path.stat().st_size
    assert report.io_dtype == "int8" and report.num_threads == 1
    assert 0 < report.latency_ms < 1000
    assert report.accuracy > 0.85  # a trained student on real digits, not chance


def test_int8_io_is_dequantized(tflite_files, mnist):
    # int8-I/O and float-I/O int8 files share the same quantized graph: their dequantized
    # outputs must coincide, which fails if the I/O scale / zero point were mishandled.
    x = mnist[2][:200]
    a = tflite_predict(tflite_files["int8"], x)
    b = tflite_predict(tflite_files["int8_float_io"], x)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_dataset_and_array_inputs_agree(tflite_files, mnist):
    _, _, x_test, y_test = mnist
    x, y = x_test[:300], y_test[:300]
    path = tflite_files["none"]
    from_arrays = evaluate_tflite(path, x, labels=y, latency_repeats=1)
    unbatched = evaluate_tflite(path, tf.data.Dataset.from_tensor_slices((x, y)),
                                latency_repeats=1)
    batched = evaluate_tflite(path, tf.data.Dataset.from_tensor_slices((x, y)).batch(64),
                              latency_repeats=1)
    assert from_arrays.accuracy == unbatched.accuracy == batched.accuracy
    assert unbatched.num_examples == batched.num_examples == 300
    assert from_arrays.agreement is None and from_arrays.max_abs_diff is None


def test_more_threads_is_recorded(tflite_files, mnist):
    latency = median_latency_ms(tflite_files["none"], mnist[2][0], num_threads=2, repeats=2)
    assert latency > 0
    with pytest.raises(ValueError, match="num_threads"):
        tflite_predict(tflite_files["none"], mnist[2][:2], num_threads=0)


def test_errors(tflite_files, mnist):
    x, y = mnist[2][:10], mnist[3][:9]
    with pytest.raises(ValueError, match="10 inputs but 9 labels"):
        evaluate_tflite(tflite_files["none"], x, labels=y)
    with pytest.raises(ValueError, match="not both"):
        evaluate_tflite(tflite_files["none"], (x, y), labels=y)
