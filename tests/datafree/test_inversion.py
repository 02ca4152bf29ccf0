"""The shared inversion loop: seeding, early stop on interrupt, noise baseline, distillation."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd.datafree import SyntheticSet, gaussian_noise_set, invert
from keras_kd.datafree.inversion import BatchStart, balanced_classes


def quadratic(x, targets):
    loss = tf.reduce_mean(tf.square(x - targets["goal"]))
    return loss, {"gap": loss}


def start(rng, index):
    return BatchStart(x=rng.normal(size=(4, 3)).astype("float32"), y=np.arange(4),
                      targets={"goal": np.full((4, 3), float(index), "float32")})


def test_adam_steps_reach_the_goal_and_runs_repeat():
    a = invert(quadratic, start, (3,), 10, 4, steps=300, learning_rate=0.1, seed=5, verbose=0)
    b = invert(quadratic, start, (3,), 10, 4, steps=300, learning_rate=0.1, seed=5, verbose=0)
    assert a.x.shape == (10, 3) and a.complete
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_allclose(a.x[4:8], 1.0, atol=1e-2)  # batch 1's goal


def test_interrupt_keeps_the_batches_made_so_far(tmp_path):
    def interrupting(rng, index):
        if index == 2:
            raise KeyboardInterrupt
        return start(rng, index)

    with pytest.warns(UserWarning, match="interrupted after 2 of 3 batches"):
        out = invert(quadratic, interrupting, (3,), 12, 4, steps=2, learning_rate=0.1,
                     verbose=0, checkpoint_dir=tmp_path)
    assert not out.complete and len(out) == 8
    resumed = invert(quadratic, start, (3,), 12, 4, steps=2, learning_rate=0.1, verbose=0,
                     checkpoint_dir=tmp_path)
    assert resumed.complete
    np.testing.assert_array_equal(resumed.x[:8], out.x)


def test_balanced_classes_and_noise_baseline():
    rng = np.random.default_rng(0)
    counts = np.bincount(np.concatenate([balanced_classes(10, 32, b, rng) for b in range(5)]))
    assert counts.min() == 16 and counts.max() == 16
    noise = gaussian_noise_set((2, 2, 1), 1000, mean=0.5, std=0.2, seed=1)
    assert abs(noise.x.mean() - 0.5) < 0.02 and abs(noise.x.std() - 0.2) < 0.02
    with pytest.raises(ValueError, match="std must be a finite real number > 0"):
        gaussian_noise_set((2,), 3, std=0.0)


def test_a_synthetic_set_feeds_the_distiller():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    teacher = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    s_in = keras.Input((3,))
    student = keras.Model(s_in, keras.layers.Dense(2)(s_in))
    synthetic = SyntheticSet(x=np.random.default_rng(0).normal(size=(64, 3)).astype("float32"),
                             y=np.zeros(64, np.int64))
    distiller = keras_kd.Distiller(teacher, student, student_loss_weight=0.0)
    distiller.compile(keras.optimizers.Adam(0.05))
    first = distiller.evaluate(synthetic.dataset(16, shuffle=False), verbose=0, return_dict=True)
    distiller.fit(synthetic.dataset(16), epochs=5, verbose=0)
    last = distiller.evaluate(synthetic.dataset(16, shuffle=False), verbose=0, return_dict=True)
    assert last["distillation_loss"] < first["distillation_loss"]
