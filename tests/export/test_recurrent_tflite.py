"""A recurrent student on token ids: `to_tflite(batch_size=...)` and `tflite_predict` on int32 ids.

A GRU's loop converts to builtin TFLite ops only with a fixed batch size (without one the
converter fails on its tensor lists, now with a message naming `batch_size`), and its input
tensor is an unquantized int32: `tflite_predict` used to divide such ids by the input's scale
of 0. Untrained weights suffice to compare LiteRT with Keras.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_kd.export import tflite_predict, to_tflite

STEPS, VOCABULARY = 12, 20


def gru_language_model() -> keras.Model:
    ids = keras.Input((STEPS,), dtype="int32")
    h = keras.layers.Embedding(VOCABULARY, 8)(ids)
    h = keras.layers.GRU(8, return_sequences=True)(h)
    return keras.Model(ids, keras.layers.Dense(VOCABULARY)(h), name="char_gru")


@pytest.fixture(scope="module")
def model_and_ids():
    keras.utils.set_random_seed(3)
    ids = np.random.default_rng(0).integers(0, VOCABULARY, (5, STEPS)).astype(np.int32)
    return gru_language_model(), ids


@pytest.mark.parametrize("batch_size", [1, 2])
def test_fixed_batch_gru_file_runs_token_ids_like_keras(model_and_ids, batch_size, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    model, ids = model_and_ids
    path = to_tflite(model, tmp_path / "gru.tflite", batch_size=batch_size)
    (detail,) = Interpreter(model_path=str(path)).get_input_details()
    assert detail["dtype"] == np.int32 and list(detail["shape_signature"]) == [batch_size, STEPS]
    expected = np.asarray(model(ids, training=False))
    # 5 sequences: with batch_size=2 the last chunk is padded to 2 and cut back.
    out = tflite_predict(path, ids)
    assert out.shape == (5, STEPS, VOCABULARY)
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)
    # Ids given as floats (as evaluate_tflite passes them) are the same ids.
    np.testing.assert_array_equal(tflite_predict(path, ids.astype(np.float32)), out)


def test_gru_without_a_fixed_batch_size_is_refused_with_the_fix(model_and_ids, tmp_path):
    model, _ = model_and_ids
    with pytest.raises(ValueError, match="'char_gru' has a recurrent loop.*pass batch_size=1"):
        to_tflite(model, tmp_path / "gru.tflite")
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        to_tflite(model, tmp_path / "gru.tflite", batch_size=0)
