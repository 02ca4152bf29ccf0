"""The one registry of distillation-loss names (`keras_kd.losses.get` / `register`)."""

from __future__ import annotations

import pytest

import keras_kd
from keras_kd import losses


def test_get_by_name_returns_fresh_instances():
    a = losses.get("soft_target")
    b = losses.get("soft_target")
    assert isinstance(a, keras_kd.SoftTargetDistillation)
    assert a is not b
    assert isinstance(losses.get("logit_matching"), keras_kd.LogitMatchingDistillation)


def test_get_passes_instances_through():
    loss = keras_kd.SoftTargetDistillation(temperature=2.0)
    assert losses.get(loss) is loss


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        losses.get("soft_targets")
    message = str(info.value)
    assert "soft_targets" in message
    for name in ("soft_target", "logit_matching"):
        assert name in message


def test_wrong_type_raises_type_error_naming_the_argument():
    with pytest.raises(TypeError, match="distillation_losses"):
        losses.get(3.0)


def test_duplicate_register_raises_and_keeps_the_original():
    original = losses.REGISTRY["soft_target"]
    with pytest.raises(ValueError, match="soft_target"):
        losses.register("soft_target", keras_kd.LogitMatchingDistillation)
    assert losses.REGISTRY["soft_target"] is original


def test_register_new_name_and_reject_non_losses():
    class _Custom(losses.DistillationLoss):
        def call(self, teacher_features, student_features):
            return teacher_features[0][:, 0]

    name = "_test_registry_custom"
    try:
        assert losses.register(name, _Custom) is _Custom
        assert isinstance(losses.get(name), _Custom)
        with pytest.raises(ValueError, match=name):
            losses.register(name, _Custom)
    finally:
        losses.REGISTRY.pop(name, None)
    with pytest.raises(TypeError):
        losses.register("_test_registry_not_a_loss", dict)
    assert "_test_registry_not_a_loss" not in losses.REGISTRY


def test_distiller_accepts_registered_names():
    import keras

    def mlp():
        inputs = keras.Input((3,))
        return keras.Model(inputs, keras.layers.Dense(2)(inputs))

    distiller = keras_kd.Distiller(
        mlp(), mlp(), distillation_losses=["soft_target", "logit_matching"],
        distillation_loss_weights=[1.0, 0.5],
    )
    kinds = [type(loss) for loss in distiller.distillation_losses]
    assert kinds == [keras_kd.SoftTargetDistillation, keras_kd.LogitMatchingDistillation]
    with pytest.raises(ValueError, match="logit_matching"):
        keras_kd.Distiller(mlp(), mlp(), distillation_losses="nope")
