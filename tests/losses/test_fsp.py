"""FSPDistillation (Yim et al. 2017) against a NumPy reference."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_kd.losses import FSPDistillation
from keras_kd.losses.functional import fsp_loss, fsp_matrix


def _np_fsp(a, b):
    h, w = a.shape[1:3]
    return np.einsum("bhwm,bhwn->bmn", a.astype(np.float64), b.astype(np.float64)) / (h * w)


def _np_loss(ta, tb, sa, sb):
    d = (_np_fsp(ta, tb) - _np_fsp(sa, sb)) ** 2
    return d.reshape(len(d), -1).mean(axis=-1)


def test_matrix_and_loss_match_numpy():
    rng = np.random.default_rng(0)
    ta, tb = rng.normal(size=(3, 5, 5, 4)), rng.normal(size=(3, 5, 5, 6))
    sa, sb = rng.normal(size=(3, 5, 5, 4)), rng.normal(size=(3, 5, 5, 6))
    ta, tb, sa, sb = (v.astype("float32") for v in (ta, tb, sa, sb))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(fsp_matrix(ta, tb)), _np_fsp(ta, tb),
                               atol=1e-5)
    got = keras.ops.convert_to_numpy(fsp_loss(ta, tb, sa, sb))
    np.testing.assert_allclose(got, _np_loss(ta, tb, sa, sb), atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(fsp_loss(ta, tb, ta, tb)), 0.0,
                               atol=1e-7)


def test_class_pools_the_larger_map_of_a_pair():
    rng = np.random.default_rng(1)
    ta = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    tb = rng.normal(size=(2, 4, 4, 5)).astype("float32")
    sa = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    sb = rng.normal(size=(2, 4, 4, 5)).astype("float32")
    loss = FSPDistillation(("ta", "tb"), ("sa", "sb"))
    loss.build([ta.shape, tb.shape], [sa.shape, sb.shape])
    assert loss.adapters == [None, None]  # channel counts already match

    def pool(x):
        return x.reshape(2, 4, 2, 4, 2, x.shape[-1]).mean(axis=(2, 4))

    got = keras.ops.convert_to_numpy(loss((ta, tb), (sa, sb)))
    np.testing.assert_allclose(got, _np_loss(pool(ta), tb, pool(sa), sb), atol=1e-5)


def test_adapters_for_thinner_students():
    loss = FSPDistillation(("ta", "tb"), ("sa", "sb"))
    loss.build([(None, 6, 6, 8), (None, 6, 6, 16)], [(None, 6, 6, 2), (None, 6, 6, 16)])
    assert loss.adapters[0] is not None and loss.adapters[1] is None
    s = np.ones((2, 6, 6, 2), "float32")
    assert keras.ops.convert_to_numpy(loss.adapters[0](s)).shape == (2, 6, 6, 8)
    strict = FSPDistillation(("ta", "tb"), ("sa", "sb"), adapter=None)
    with pytest.raises(ValueError, match="adapter=None"):
        strict.build([(None, 6, 6, 8), (None, 6, 6, 16)], [(None, 6, 6, 2), (None, 6, 6, 16)])


def test_errors_and_config():
    with pytest.raises(ValueError, match="teacher_layers"):
        FSPDistillation("ta", ("sa", "sb"))
    with pytest.raises(ValueError, match="4-D"):
        FSPDistillation(("a", "b"), ("c", "d")).build([(None, 4), (None, 4)], [(None, 4)] * 2)
    loss = FSPDistillation(("a", "b"), ("c", "d"), adapter=None)
    clone = FSPDistillation.from_config(loss.get_config())
    assert clone.teacher_layers == ("a", "b") and clone.adapter_arg is None
    assert loss.name.startswith("fsp_distillation")
