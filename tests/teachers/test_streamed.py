"""Streamed teacher cache: bitwise the in-memory cache, batched as its input, resumable, loud."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd.losses import LOGITS, TopKSoftTargetDistillation
from keras_kd.teachers import read_teacher_outputs, stream_teacher_outputs
from keras_kd.teachers.cached import CACHE_OUTPUTS_KEY

N_IN, N_CLASSES, N = 4, 7, 22
TOP_K = TopKSoftTargetDistillation(top_k=3, temperature=2.0)
TAPS = (LOGITS, *TOP_K.teacher_taps())


def mlp(hidden, name):
    inputs = keras.Input((N_IN,))
    h = keras.layers.Dense(hidden, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(N_CLASSES)(h), name=name)


def data(seed=0, n=N):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, N_IN)).astype("float32") * 3.0,
            rng.integers(0, N_CLASSES, size=(n,)).astype("int32"),
            rng.uniform(0.0, 2.0, size=(n,)).astype("float32"))


def elements(dataset) -> list:
    """Every element as nested NumPy arrays."""
    return [tf.nest.map_structure(lambda t: t.numpy(), e) for e in dataset]


def assert_bitwise_equal(got, want):
    assert tf.nest.map_structure(lambda _: 0, got) == tf.nest.map_structure(lambda _: 0, want)
    for a, b in zip(tf.nest.flatten(got), tf.nest.flatten(want)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("form", ["arrays", "unbatched", "batched", "batched_drop_remainder"])
def test_streamed_cache_is_bitwise_the_in_memory_cache_and_batched_like_its_input(form, tmp_path):
    teacher = mlp(16, "teacher")
    x, y, w = data()
    args, kwargs = (x,), {"y": y, "sample_weight": w}
    if form != "arrays":
        dataset = tf.data.Dataset.from_tensor_slices((x, y, w))
        if form == "batched":
            dataset = dataset.batch(5)  # 5, 5, 5, 5, 2
        elif form == "batched_drop_remainder":
            dataset = dataset.batch(4, drop_remainder=True)
        args, kwargs = (dataset,), {}
    in_memory = keras_kd.cache_teacher_outputs(teacher, *args, **kwargs, taps=TAPS, batch_size=6)
    streamed = stream_teacher_outputs(teacher, *args, tmp_path, **kwargs, taps=TAPS,
                                      batch_size=6, batches_per_shard=2)
    assert streamed.element_spec == in_memory.element_spec
    want = elements(in_memory)
    assert len(want) == {"batched": 5, "batched_drop_remainder": 5}.get(form, N)
    assert_bitwise_equal(elements(streamed), want)
    # ... and equal to the teacher's own outputs.
    def stack(key, trailing):
        return np.concatenate([np.reshape(e[0][CACHE_OUTPUTS_KEY][key], (-1, *trailing))
                               for e in want])

    logits = stack("logits", (N_CLASSES,))
    n = len(logits)
    np.testing.assert_allclose(logits, keras.ops.convert_to_numpy(teacher(x[:n])), atol=1e-5)
    values_tap, indices_tap, rest_tap = TOP_K.teacher_taps()
    values, indices = stack(values_tap.key, (3,)), stack(indices_tap.key, (3,))
    rest = stack(rest_tap.key, ())
    assert indices.dtype == np.int32 and values.dtype == rest.dtype == np.float32
    np.testing.assert_array_equal(values, np.take_along_axis(logits, indices, axis=-1))
    np.testing.assert_array_equal(indices, np.argsort(-logits, axis=-1, kind="stable")[:, :3])
    p = np.exp(logits / 2.0 - logits.max(-1, keepdims=True) / 2.0)
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(rest, 1.0 - np.take_along_axis(p, indices, -1).sum(-1), atol=1e-6)


def test_streamed_cache_resumes_after_an_interruption(tmp_path):
    teacher = mlp(16, "teacher")
    teacher_calls = tf.Variable(0, dtype=tf.int64)

    def counted(batch):  # the teacher_input_fn counts the teacher's calls (one per batch)
        teacher_calls.assign_add(1)
        return batch

    x, y, _ = data(1)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)  # 11 batches

    def interrupted(xb, yb):
        tf.debugging.assert_equal(tf.shape(yb)[0], -1, message="simulated interruption")
        return xb, yb

    # Batches 0-6 go through, batch 7 fails: shards 0-2 (batches 0-5) are finished.
    failing = dataset.take(7).concatenate(dataset.skip(7).map(interrupted))
    with pytest.raises(tf.errors.InvalidArgumentError, match="simulated interruption"):
        stream_teacher_outputs(teacher, failing, tmp_path, teacher_input_fn=counted,
                               batches_per_shard=2)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert not manifest["complete"]
    assert [s["batches"] for s in manifest["shards"]] == [2, 2, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.json", "shard-00000.tfrecord", "shard-00001.tfrecord",
        "shard-00002.tfrecord", "shard-00003.tfrecord.tmp"]
    with pytest.raises(ValueError, match="unfinished teacher cache"):
        read_teacher_outputs(dataset, tmp_path)

    teacher_calls.assign(0)
    streamed = stream_teacher_outputs(teacher, dataset, tmp_path, teacher_input_fn=counted,
                                      batches_per_shard=2)
    assert int(teacher_calls.numpy()) == 11 - 6  # only the batches not written yet
    assert not list(tmp_path.glob("*.tmp"))
    in_memory = keras_kd.cache_teacher_logits(teacher, dataset)
    assert_bitwise_equal(elements(streamed), elements(in_memory))

    teacher_calls.assign(0)
    again = stream_teacher_outputs(teacher, dataset, tmp_path, teacher_input_fn=counted,
                                   batches_per_shard=2)
    assert int(teacher_calls.numpy()) == 0  # a finished cache is only read
    assert_bitwise_equal(elements(again), elements(in_memory))


def test_streamed_cache_refuses_other_data_order_teacher_or_size(tmp_path):
    teacher = mlp(16, "teacher")
    x, y, _ = data(2)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    stream_teacher_outputs(teacher, dataset, tmp_path)

    # Same shapes, another order: stopped at the first element that differs.
    shuffled = tf.data.Dataset.from_tensor_slices((x[::-1], y[::-1])).batch(4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="same elements in the same order"):
        elements(read_teacher_outputs(shuffled, tmp_path))
    with pytest.raises(ValueError, match="data yields 3 batches, but the cache .* holds 6"):
        read_teacher_outputs(dataset.take(3), tmp_path)
    with pytest.raises(ValueError, match="another structure, shape or dtype"):
        read_teacher_outputs(tf.data.Dataset.from_tensor_slices(x).batch(4), tmp_path)
    with pytest.raises(ValueError, match="holds no teacher cache"):
        read_teacher_outputs(dataset, tmp_path / "missing")

    other = mlp(16, "teacher")
    with pytest.raises(ValueError, match="made with another teacher. .*overwrite=True"):
        stream_teacher_outputs(other, dataset, tmp_path)
    with pytest.raises(ValueError, match="made with another batches_per_shard"):
        stream_teacher_outputs(teacher, dataset, tmp_path, batches_per_shard=3)
    replaced = stream_teacher_outputs(other, dataset, tmp_path, overwrite=True)
    assert_bitwise_equal(elements(replaced),
                         elements(keras_kd.cache_teacher_logits(other, dataset)))


def test_streamed_cache_argument_errors(tmp_path):
    teacher = mlp(16, "teacher")
    x, y, w = data(3)
    with pytest.raises(ValueError, match="batches_per_shard must be a positive integer, got 0"):
        stream_teacher_outputs(teacher, x, tmp_path, y, batches_per_shard=0)
    with pytest.raises(TypeError, match="batches_per_shard must be a positive integer"):
        stream_teacher_outputs(teacher, x, tmp_path, y, batches_per_shard=2.0)
    with pytest.raises(TypeError, match="teacher must be a keras.Model"):
        stream_teacher_outputs(lambda v: v, x, tmp_path)
    with pytest.raises(TypeError, match="taps must be a sequence of keras_kd.losses.Tap"):
        stream_teacher_outputs(teacher, x, tmp_path, taps=LOGITS)
    with pytest.raises(ValueError, match="sample_weight needs y"):
        stream_teacher_outputs(teacher, x, tmp_path, sample_weight=w)
    with pytest.raises(ValueError, match="empty dataset"):
        stream_teacher_outputs(teacher, x[:0], tmp_path)


def test_distiller_trains_on_the_streamed_cache_as_on_the_in_memory_one(tmp_path):
    teacher = mlp(16, "teacher")
    x, y, w = data(4, n=24)
    dataset = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(8)
    initial = mlp(6, "student").get_weights()

    def fit(train):
        student = mlp(6, "student")
        student.set_weights(initial)
        distiller = keras_kd.Distiller(None, student, student_loss_weight=0.3)
        distiller.compile(keras.optimizers.SGD(0.5),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        logs = distiller.fit(train, epochs=2, verbose=0).history
        return [np.asarray(v) for v in student.get_weights()], logs

    streamed, streamed_logs = fit(stream_teacher_outputs(teacher, dataset, tmp_path))
    in_memory, in_memory_logs = fit(keras_kd.cache_teacher_logits(teacher, dataset))
    assert_bitwise_equal(streamed, in_memory)
    assert streamed_logs == in_memory_logs
    assert max(np.abs(a - b).max() for a, b in zip(streamed, initial)) > 1e-3
