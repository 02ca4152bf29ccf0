"""Regression output matching (`output_mse`, `OutputMatchingDistillation`)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_kd.losses import (
    REGISTRY,
    LogitMatchingDistillation,
    OutputMatchingDistillation,
    get,
    output_mse,
)


def np_output_mse(t, s):
    """mean over all non-batch entries of (s - t)^2, in float64."""
    d = np.asarray(s, np.float64) - np.asarray(t, np.float64)
    return (d**2).reshape(d.shape[0], -1).mean(axis=-1)


def _outputs(seed, shape):
    return (np.random.default_rng(seed).normal(size=shape) * 3.0).astype("float32")


@pytest.mark.parametrize("shape", [(5,), (5, 1), (5, 3), (5, 4, 2), (5, 3, 3, 2)])
def test_matches_numpy_for_every_output_shape(shape):
    t, s = _outputs(0, shape), _outputs(1, shape)
    got = keras.ops.convert_to_numpy(output_mse(t, s))
    assert got.shape == (5,) and got.dtype == np.float32
    np.testing.assert_allclose(got, np_output_mse(t, s), atol=1e-5, rtol=1e-6)
    layer = OutputMatchingDistillation()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer((t,), (s,))), np_output_mse(t, s), atol=1e-5, rtol=1e-6
    )


def test_identical_outputs_give_zero_and_half_precision_returns_float32():
    t = _outputs(2, (5, 3))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(output_mse(t, t)), np.zeros(5))
    got = keras.ops.convert_to_numpy(output_mse(t.astype("float16"), (t + 1).astype("float16")))
    assert got.dtype == np.float32


def test_equals_keras_mean_squared_error_against_teacher_predictions():
    t, s = _outputs(3, (5, 4)), _outputs(4, (5, 4))
    mse = keras.losses.MeanSquaredError(reduction=None)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(output_mse(t, s)),
        keras.ops.convert_to_numpy(mse(t, s)),
        atol=1e-5,
        rtol=1e-6,
    )


def test_differs_from_logit_matching_by_mean_versus_half_sum():
    t, s = _outputs(5, (5, 4)), _outputs(6, (5, 4))
    mean = keras.ops.convert_to_numpy(OutputMatchingDistillation()((t,), (s,)))
    half_sum = keras.ops.convert_to_numpy(LogitMatchingDistillation()((t,), (s,)))
    np.testing.assert_allclose(half_sum, mean * 4 / 2, rtol=1e-5)


def test_registry_and_config_round_trip():
    assert REGISTRY["output_matching"] is OutputMatchingDistillation
    loss = get("output_matching")
    assert isinstance(loss, OutputMatchingDistillation)
    assert loss.temperature_variable() is None and not loss.needs_labels()
    named = OutputMatchingDistillation(name="regress")
    restored = OutputMatchingDistillation.from_config(named.get_config())
    assert restored.name == "regress" and restored.log_name == "regress"
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(named))
    assert isinstance(again, OutputMatchingDistillation)
    t, s = _outputs(7, (5, 2)), _outputs(8, (5, 2))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(again((t,), (s,))), np_output_mse(t, s), atol=1e-5
    )
