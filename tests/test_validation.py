"""`keras_kd.validation`: which values each check accepts, what it returns, its exact messages."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd import validation as v

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "value, expected",
    [
        (4, 4.0),
        (2.5, 2.5),
        (np.float32(4.0), 4.0),
        (np.float16(0.5), 0.5),
        (np.int64(2), 2.0),
        (np.uint8(3), 3.0),
        (np.array(1.25), 1.25),
        (np.array(7, np.int32), 7.0),
        (tf.constant(4.0), 4.0),
        (tf.constant(3, tf.int64), 3.0),
        (tf.Variable(0.75), 0.75),
    ],
)
def test_real_scalar_accepts_numbers_numpy_scalars_and_0d_tensors(value, expected):
    got = v.real_scalar("x", value)
    assert type(got) is float
    assert got == expected


def test_real_scalar_reads_a_keras_variable_at_the_call():
    variable = keras.Variable(4.0, trainable=False)
    assert v.real_scalar("temperature", variable) == 4.0
    variable.assign(2.0)
    assert v.real_scalar("temperature", variable) == 2.0


@pytest.mark.parametrize(
    "value",
    [True, False, np.bool_(True), "4", None, [4.0], (4.0,), np.array([4.0]), np.ones((1, 1)),
     tf.constant([4.0]), 1 + 2j, np.array(True), object()],
)
def test_real_scalar_refuses_other_types_with_type_error(value):
    with pytest.raises(TypeError) as info:
        v.real_scalar("x", value)
    assert str(info.value) == f"x must be a finite real number, got {value!r}."


@pytest.mark.parametrize("value", [NAN, INF, -INF, np.float32("nan"), np.array(INF),
                                   tf.constant(float("nan"))])
def test_real_scalar_refuses_nan_and_inf_with_value_error(value):
    with pytest.raises(ValueError) as info:
        v.real_scalar("x", value)
    assert type(info.value) is ValueError
    assert str(info.value) == f"x must be a finite real number, got {value!r}."


def test_real_scalar_refuses_a_symbolic_tensor():
    seen = []

    @tf.function
    def inside(x):
        with pytest.raises(TypeError, match="must be a finite real number"):
            v.real_scalar("temperature", x)
        seen.append(True)
        return x

    inside(tf.constant(2.0))
    assert seen == [True]


def test_exact_messages_with_and_without_hint():
    with pytest.raises(ValueError) as info:
        v.positive("temperature", 0.0)
    assert str(info.value) == "temperature must be a finite real number > 0, got 0.0."
    with pytest.raises(ValueError) as info:
        v.positive("temperature", INF, hint="Pass e.g. 4.0.")
    assert str(info.value) == (
        "temperature must be a finite real number > 0, got inf. Pass e.g. 4.0."
    )
    with pytest.raises(TypeError) as info:
        v.positive("temperature", "4")
    assert str(info.value) == "temperature must be a finite real number > 0, got '4'."
    with pytest.raises(TypeError) as info:
        v.positive("temperature", np.bool_(True))
    assert str(info.value) == (
        f"temperature must be a finite real number > 0, got {np.bool_(True)!r}."
    )
    with pytest.raises(ValueError) as info:
        v.non_negative("angle_weight", -1)
    assert str(info.value) == "angle_weight must be a non-negative finite real number, got -1."
    with pytest.raises(ValueError) as info:
        v.unit_interval("student_loss_weight", 1.5)
    assert str(info.value) == "student_loss_weight must be a real number in [0, 1], got 1.5."
    with pytest.raises(ValueError) as info:
        v.positive_int("num_paths", 0)
    assert str(info.value) == "num_paths must be a positive integer, got 0."
    with pytest.raises(TypeError) as info:
        v.non_negative_int("count", 2.0)
    assert str(info.value) == "count must be a non-negative integer, got 2.0."


def test_a_long_value_is_shortened_in_the_message():
    value = np.arange(1000.0)
    with pytest.raises(TypeError) as info:
        v.real_scalar("x", value)
    message = str(info.value)
    assert message.startswith("x must be a finite real number, got array([  0.,   1.,")
    assert message.endswith("....") and len(message) < 260


def test_positive_non_negative_unit_interval_bounds():
    assert v.positive("t", np.float32(1e-6)) == pytest.approx(1e-6)
    for bad in (0, -1.0, NAN, INF):
        with pytest.raises(ValueError, match="t must be a finite real number > 0"):
            v.positive("t", bad)
    assert v.non_negative("w", 0) == 0.0
    assert v.non_negative("w", np.int64(3)) == 3.0
    for bad in (-1e-9, NAN, INF):
        with pytest.raises(ValueError, match="w must be a non-negative finite real number"):
            v.non_negative("w", bad)
    assert [v.unit_interval("a", x) for x in (0, 1, np.float32(0.25))] == [0.0, 1.0, 0.25]
    for bad in (-0.01, 1.01, NAN, INF):
        with pytest.raises(ValueError, match=r"a must be a real number in \[0, 1\]"):
            v.unit_interval("a", bad)
    for check in (v.positive, v.non_negative, v.unit_interval):
        with pytest.raises(TypeError):
            check("x", True)
        with pytest.raises(TypeError):
            check("x", None)


def test_integers():
    assert v.positive_int("n", np.int64(2)) == 2
    assert type(v.positive_int("n", np.int64(2))) is int
    assert v.positive_int("n", np.array(5, np.int32)) == 5
    assert v.positive_int("n", tf.constant(3)) == 3
    assert v.non_negative_int("n", 0) == 0
    for bad in (True, 2.0, np.float32(2.0), "2", None, np.array([2])):
        with pytest.raises(TypeError, match="n must be a positive integer"):
            v.positive_int("n", bad)
    with pytest.raises(ValueError, match=r"n must be a positive integer, got np.int64\(0\)\.$"):
        v.positive_int("n", np.int64(0))
    with pytest.raises(ValueError, match="n must be a non-negative integer, got -1"):
        v.non_negative_int("n", -1)


def test_weights_accepts_sequences_arrays_and_tensors():
    assert v.weights("w", [1, np.float32(0.5), np.array(0.0)]) == [1.0, 0.5, 0.0]
    assert v.weights("w", (2.0,), 1) == [2.0]
    assert v.weights("w", np.array([0.25, 0.75]), 2) == [0.25, 0.75]
    assert v.weights("w", tf.constant([1.0, 2.0]), 2) == [1.0, 2.0]
    assert all(type(x) is float for x in v.weights("w", np.array([1, 2])))


def test_weights_names_the_index_and_refuses_nan_inf_negative():
    with pytest.raises(ValueError) as info:
        v.weights("distillation_loss_weights", [1.0, NAN], 2)
    assert str(info.value) == (
        "distillation_loss_weights[1] must be a non-negative finite real number, got nan."
    )
    with pytest.raises(ValueError, match=r"w\[0\] must be a non-negative finite real number, "
                                         r"got inf\. One per loss\.$"):
        v.weights("w", [INF], hint="One per loss.")
    with pytest.raises(ValueError, match=r"w\[2\] .* got -1\.0"):
        v.weights("w", [1.0, 1.0, -1.0])
    with pytest.raises(TypeError) as info:
        v.weights("w", [1.0, "2"])
    assert str(info.value) == "w[1] must be a non-negative finite real number, got '2'."
    with pytest.raises(TypeError) as info:
        v.weights("w", [True])
    assert str(info.value) == "w[0] must be a non-negative finite real number, got True."


def test_weights_counts_and_sequence_type():
    with pytest.raises(ValueError) as info:
        v.weights("weights", [1.0, 2.0], 3, hint="Give one weight per teacher.")
    assert str(info.value) == (
        "weights must be a sequence of 3 non-negative finite real numbers, got [1.0, 2.0]. "
        "Give one weight per teacher."
    )
    with pytest.raises(ValueError) as info:
        v.weights("weights", [])
    assert str(info.value) == (
        "weights must be a non-empty sequence of non-negative finite real numbers, got []."
    )
    for bad in (0.5, "12", {1.0, 2.0}, None, (x for x in [1.0]), np.array(1.0)):
        with pytest.raises(TypeError, match="weights must be a"):
            v.weights("weights", bad)


def test_one_of():
    modes = ("probabilities", "logits", "confidence")
    assert v.one_of("combine", "logits", modes) == "logits"
    with pytest.raises(ValueError) as info:
        v.one_of("combine", "median", modes)
    assert str(info.value) == (
        "combine must be one of ('probabilities', 'logits', 'confidence'), got 'median'."
    )
    with pytest.raises(TypeError) as info:
        v.one_of("combine", 3, modes)
    assert str(info.value) == (
        "combine must be one of ('probabilities', 'logits', 'confidence'), got 3."
    )
    assert v.one_of("adapter", None, ("auto", None)) is None


def test_returned_values_are_plain_python_and_finite():
    for value in (v.real_scalar("x", tf.constant(1.5)), v.positive("x", np.float64(2.0))):
        assert type(value) is float and math.isfinite(value)
