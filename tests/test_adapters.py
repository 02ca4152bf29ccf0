"""Adapters: shapes for every case, resize rules, user layers, errors, serialization."""

from __future__ import annotations

import io
import json
import zipfile

import h5py
import keras
import numpy as np
import pytest

import keras_kd
from keras_kd import losses
from keras_kd.adapters import FeatureAdapter, make_adapter, resize_spatial


@pytest.mark.parametrize(
    "student_shape, teacher_shape",
    [
        ((2, 8, 8, 4), (2, 8, 8, 16)),   # channels only
        ((2, 16, 16, 4), (2, 8, 8, 16)),  # integer down-scaling (average pooling)
        ((2, 6, 6, 4), (2, 9, 9, 16)),   # up-scaling (bilinear)
        ((2, 7), (2, 12)),               # vectors: Dense
        ((2, 5, 5, 3), (2, 12)),         # map -> vector: global average pool + Dense
    ],
)
def test_auto_adapter_maps_to_the_teacher_shape(student_shape, teacher_shape):
    adapter = make_adapter("auto", teacher_shape, student_shape)
    x = np.random.default_rng(0).normal(size=student_shape).astype("float32")
    assert tuple(adapter(x).shape) == teacher_shape
    assert adapter.trainable_variables


def test_conv_adapter_is_a_1x1_conv_plus_bn_of_the_pooled_map():
    adapter = make_adapter("auto", (None, 2, 2, 3), (None, 4, 4, 2))
    x = np.random.default_rng(1).normal(size=(5, 4, 4, 2)).astype("float32")
    pooled = x.reshape(5, 2, 2, 2, 2, 2).mean(axis=(2, 4))
    kernel = keras.ops.convert_to_numpy(adapter.conv.kernel)[0, 0]  # (2, 3)
    bn = adapter.norm
    mean, var = (keras.ops.convert_to_numpy(v) for v in (bn.moving_mean, bn.moving_variance))
    ref = (pooled @ kernel - mean) / np.sqrt(var + bn.epsilon)
    ref = ref * keras.ops.convert_to_numpy(bn.gamma) + keras.ops.convert_to_numpy(bn.beta)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(adapter(x, training=False)), ref,
                               atol=1e-5)
    no_bn = FeatureAdapter((2, 2, 3), batch_norm=False)
    no_bn.build((None, 4, 4, 2))
    assert no_bn.norm is None and no_bn.conv.use_bias


def test_resize_spatial():
    x = np.arange(2 * 4 * 6 * 1, dtype="float32").reshape(2, 4, 6, 1)
    pooled = keras.ops.convert_to_numpy(resize_spatial(x, (2, 3)))
    np.testing.assert_allclose(pooled, x.reshape(2, 2, 2, 3, 2, 1).mean(axis=(2, 4)), atol=1e-6)
    assert resize_spatial(x, (4, 6)) is x
    assert tuple(resize_spatial(x, (5, 7)).shape) == (2, 5, 7, 1)


def test_identity_user_layer_and_errors():
    assert make_adapter("auto", (None, 4, 4, 2), (None, 4, 4, 2)) is None
    assert make_adapter(None, (None, 3), (None, 3)) is None
    assert make_adapter("auto", (None, 4, 4, 2), (None, 4, 4, 2), always=True) is not None
    user = keras.layers.Dense(6)
    assert make_adapter(user, (None, 6), (None, 3)) is user and user.built
    with pytest.raises(ValueError, match="adapter=None needs equal"):
        make_adapter(None, (None, 6), (None, 3))
    with pytest.raises(ValueError, match="maps the student feature"):
        make_adapter(keras.layers.Dense(5), (None, 6), (None, 3))
    with pytest.raises(ValueError, match="must be 'auto'"):
        make_adapter("conv", (None, 6), (None, 3))
    with pytest.raises(ValueError, match="tap a 4-D student layer"):
        make_adapter("auto", (None, 4, 4, 2), (None, 8))
    with pytest.raises(ValueError, match="target_shape"):
        FeatureAdapter((4, 4))


def test_config_round_trip():
    adapter = FeatureAdapter((3, 3, 8), batch_norm=False, name="a")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(adapter))
    assert isinstance(clone, FeatureAdapter)
    assert clone.target_shape == (3, 3, 8) and clone.batch_norm is False


# Names before adapters had one: config keys per class, and the attribute under which Keras
# stored the adapter's weights, per loss weight group (FSP's list was already `adapters`).
_OLD_CONFIG_KEYS = {
    "HintDistillation": "regressor",
    "OverhaulDistillation": "connector",
    "FSPDistillation": "regressor",
}
_OLD_ATTRIBUTES = {
    "hint_distillation": "regressor",
    "overhaul_distillation": "connector",
    "feature_distillation": "regressor",
}


def _as_saved_before_the_rename(new_file, old_file):
    """Rewrites a `.keras` file with the pre-rename config keys and weight paths."""

    def rename_keys(node):
        if isinstance(node, dict):
            old_key = _OLD_CONFIG_KEYS.get(node.get("class_name"))
            if old_key is not None:
                node["config"][old_key] = node["config"].pop("adapter")
            for value in node.values():
                rename_keys(value)
        elif isinstance(node, list):
            for value in node:
                rename_keys(value)

    with zipfile.ZipFile(new_file) as src, zipfile.ZipFile(old_file, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "config.json":
                config = json.loads(data)
                rename_keys(config)
                data = json.dumps(config).encode()
            elif item == "model.weights.h5":
                buffer = io.BytesIO(data)
                with h5py.File(buffer, "r+") as weights:
                    for group, attribute in _OLD_ATTRIBUTES.items():
                        path = f"distillation_losses/{group}"
                        weights.move(f"{path}/adapter", f"{path}/{attribute}")
                data = buffer.getvalue()
            dst.writestr(item, data)


def test_files_saved_before_the_rename_load_with_their_adapter_weights(tmp_path):
    def net(prefix, width):
        x = keras.Input((8, 8, 1))
        h = keras.layers.Conv2D(width, 3, padding="same", name=f"{prefix}conv")(x)
        h = keras.layers.BatchNormalization(name=f"{prefix}bn")(h)
        h = keras.layers.ReLU(name=f"{prefix}relu")(h)
        h2 = keras.layers.ReLU(name=f"{prefix}relu2")(h)
        g = keras.layers.GlobalAveragePooling2D()(h2)
        return keras.Model(x, keras.layers.Dense(3, name=f"{prefix}logits")(g))

    teacher, student = net("t_", 6), net("s_", 2)
    distiller = keras_kd.Distiller(teacher, student, [
        losses.HintDistillation("t_relu", "s_relu"),
        losses.OverhaulDistillation("t_relu", "s_relu", teacher=teacher),
        losses.FSPDistillation(("t_relu", "t_relu2"), ("s_relu", "s_relu2")),
        losses.FeatureDistillation("mse", "t_relu2", "s_relu2"),
    ])
    distiller.save(tmp_path / "new.keras")
    _as_saved_before_the_rename(tmp_path / "new.keras", tmp_path / "old.keras")
    with zipfile.ZipFile(tmp_path / "old.keras") as old:
        assert b'"regressor"' in old.read("config.json")
        assert b'"connector"' in old.read("config.json")
    reloaded = keras.models.load_model(tmp_path / "old.keras")
    for loss in reloaded.distillation_losses[:3]:
        assert loss.adapter_arg == "auto"
    assert len(reloaded.weights) == len(distiller.weights)
    for saved, loaded in zip(distiller.weights, reloaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded),
                                      keras.ops.convert_to_numpy(saved))
