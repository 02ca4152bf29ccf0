"""Loss constructors refuse bad numbers (nan, inf, bools, strings) before building anything."""

from __future__ import annotations

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd import losses
from keras_kd.adapters import FeatureAdapter
from keras_kd.losses import AttentionTransfer, RelationalDistillation, SoftTargetDistillation

NAN, INF = float("nan"), float("inf")


def _with_temperature():
    """Every registered loss that builds from defaults and takes a `temperature` argument."""
    found = []
    for name, cls in sorted(losses.REGISTRY.items()):
        parameters = inspect.signature(cls.__init__).parameters
        required = [p for p in list(parameters.values())[1:]
                    if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if "temperature" in parameters and not required:
            found.append(pytest.param(cls, id=name))
    return found


def test_the_temperature_losses_are_found():
    names = {p.id for p in _with_temperature()}
    assert {"soft_target"} <= names


@pytest.mark.parametrize("cls", _with_temperature())
@pytest.mark.parametrize("bad", [NAN, INF, -INF, 0.0, -1.0, np.float32("nan"), np.array(INF)])
def test_temperature_nan_inf_or_non_positive_is_a_value_error(cls, bad):
    with pytest.raises(ValueError) as info:
        cls(temperature=bad)
    assert str(info.value).startswith(
        f"temperature must be a finite real number > 0, got {bad!r}."
    )


@pytest.mark.parametrize("cls", _with_temperature())
@pytest.mark.parametrize("bad", ["4", True, None, [4.0], np.ones(2)])
def test_temperature_of_the_wrong_type_is_a_type_error(cls, bad):
    with pytest.raises(TypeError, match="temperature must be a finite real number > 0"):
        cls(temperature=bad)


@pytest.mark.parametrize("cls", _with_temperature())
@pytest.mark.parametrize("value", [np.float32(2.5), np.int64(2), np.array(2.5), tf.constant(2.5),
                                   keras.Variable(2.5)])
def test_temperature_accepts_numpy_scalars_and_0d_tensors(cls, value):
    loss = cls(temperature=value)
    expected = float(np.asarray(keras.ops.convert_to_numpy(value)))
    assert float(keras.ops.convert_to_numpy(loss.temperature_variable())) == expected
    assert loss.get_config()["temperature"] == expected


def test_soft_target_value_with_a_numpy_temperature_matches_a_float_one():
    t = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    s = np.random.default_rng(1).normal(size=(4, 5)).astype("float32")
    a = SoftTargetDistillation(temperature=np.float32(3.0))((t,), (s,))
    b = SoftTargetDistillation(temperature=3.0)((t,), (s,))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


@pytest.mark.parametrize("bad", [NAN, INF, 0.0])
def test_attention_transfer_p(bad):
    with pytest.raises(ValueError, match=r"p must be a finite real number > 0, got .*\. The paper"):
        AttentionTransfer("t", "s", p=bad)
    with pytest.raises(TypeError, match="p must be a finite real number > 0, got '2'"):
        AttentionTransfer("t", "s", p="2")
    assert AttentionTransfer("t", "s", p=np.int64(3)).p == 3.0


@pytest.mark.parametrize("argument", ["distance_weight", "angle_weight"])
def test_relational_weights(argument):
    for bad in (NAN, INF, -1.0):
        with pytest.raises(ValueError, match=f"{argument} must be a non-negative finite real"):
            RelationalDistillation(**{argument: bad})
    with pytest.raises(TypeError, match=f"{argument} must be a non-negative finite real"):
        RelationalDistillation(**{argument: True})
    loss = RelationalDistillation(**{argument: np.float32(2.0)})
    assert getattr(loss, argument) == 2.0 and type(getattr(loss, argument)) is float


def test_feature_adapter_target_shape():
    with pytest.raises(TypeError, match=r"target_shape\[0\] must be a positive integer, got None\. "
                                        r"The teacher feature needs a static shape"):
        FeatureAdapter((None, 4, 8))
    with pytest.raises(TypeError, match=r"target_shape\[2\] must be a positive integer, got 8\.5"):
        FeatureAdapter((4, 4, 8.5))  # was silently truncated to 8
    with pytest.raises(ValueError, match=r"target_shape\[0\] must be a positive integer, got 0"):
        FeatureAdapter((0,))
    with pytest.raises(TypeError, match="target_shape must be a tuple"):
        FeatureAdapter(8)
    assert FeatureAdapter([np.int64(3)]).target_shape == (3,)
