"""Decoupled KD (`decoupled_kd`, `DecoupledKD`) and its warm-up callback (`DKDWarmup`)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd.callbacks import DKDWarmup
from keras_kd.losses import (
    REGISTRY,
    DecoupledKD,
    SoftTargetDistillation,
    decoupled_kd,
    get,
    soft_target_kl,
)
from keras_kd.losses.functional import decoupled_kd_terms


def np_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_kl_div_rows(log_q, p):
    """torch.nn.functional.kl_div(log_q, p) summed per row: sum p (log p - log_q), 0 log 0 = 0."""
    safe = np.where(p > 0, p, 1.0)
    return np.where(p > 0, p * (np.log(safe) - log_q), 0.0).sum(axis=1)


def np_dkd_terms(logits_teacher, logits_student, target, temperature):
    """Per-example TCKD and NCKD, a float64 port of mdistiller/distillers/DKD.py `dkd_loss`
    (megvii-research/mdistiller@a08d46f, lines 8-32) without its division by the batch size."""
    classes = logits_student.shape[1]
    gt_mask = np.eye(classes)[target]
    other_mask = 1.0 - gt_mask
    pred_student = np_softmax(logits_student / temperature)
    pred_teacher = np_softmax(logits_teacher / temperature)
    cat = lambda t: np.stack([(t * gt_mask).sum(1), (t * other_mask).sum(1)], axis=1)  # noqa: E731
    pred_student, pred_teacher = cat(pred_student), cat(pred_teacher)
    tckd = np_kl_div_rows(np.log(pred_student), pred_teacher) * temperature**2
    pred_teacher_part2 = np_softmax(logits_teacher / temperature - 1000.0 * gt_mask)
    log_pred_student_part2 = np_log_softmax(logits_student / temperature - 1000.0 * gt_mask)
    nckd = np_kl_div_rows(log_pred_student_part2, pred_teacher_part2) * temperature**2
    return tckd, nckd


def np_dkd(t, s, y, alpha, beta, temperature):
    tckd, nckd = np_dkd_terms(t, s, y, temperature)
    return alpha * tckd + beta * nckd


def np_standardize(z, eps=1e-7):
    """Official `normalize`: (z - mean) / (1e-7 + std), torch's std is the sample std."""
    z = np.asarray(z, np.float64)
    return (z - z.mean(-1, keepdims=True)) / (eps + z.std(-1, ddof=1, keepdims=True))


def _logits(seed, shape=(8, 6), scale=3.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype("float32")


def _labels(seed, n=8, classes=6):
    return np.random.default_rng(seed).integers(0, classes, size=n).astype("int64")


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _rtol(temperature):
    return 1e-5 if temperature <= 4.0 else 1e-4  # as in test_soft_target: T^2 amplifies rounding


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
@pytest.mark.parametrize("alpha,beta", [(1.0, 8.0), (1.0, 0.5), (0.0, 1.0)])
def test_matches_the_official_dkd_loss(temperature, alpha, beta):
    t, s, y = _logits(0), _logits(1), _labels(2)
    got = _np(decoupled_kd(t, s, y, alpha, beta, temperature))
    assert got.shape == (8,) and got.dtype == np.float32
    expected = np_dkd(t, s, y, alpha, beta, temperature)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=_rtol(temperature))
    # the official loss is the batch mean
    np.testing.assert_allclose(got.mean(), expected.mean(), atol=1e-5, rtol=_rtol(temperature))


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_layer_matches_numpy(temperature):
    t, s, y = _logits(3), _logits(4), _labels(5)
    loss = DecoupledKD(alpha=1.0, beta=8.0, temperature=temperature)
    got = _np(loss((t,), (s,), labels=y))
    np.testing.assert_allclose(
        got, np_dkd(t, s, y, 1.0, 8.0, temperature), atol=1e-5, rtol=_rtol(temperature)
    )


def test_terms_are_kl_of_binary_and_of_renormalised_non_target_distributions():
    """The paper's definitions, computed by deleting the target column."""
    t, s, y = _logits(6), _logits(7), _labels(8)
    tckd, nckd = (_np(v) for v in decoupled_kd_terms(t, s, y, 4.0))
    pt, ps = np_softmax(t / 4.0), np_softmax(s / 4.0)
    for i, target in enumerate(y):
        bt = np.array([pt[i, target], 1.0 - pt[i, target]])
        bs = np.array([ps[i, target], 1.0 - ps[i, target]])
        np.testing.assert_allclose(tckd[i], 16.0 * (bt * np.log(bt / bs)).sum(), atol=1e-5)
        keep = np.arange(6) != target
        qt, qs = pt[i, keep] / pt[i, keep].sum(), ps[i, keep] / ps[i, keep].sum()
        np.testing.assert_allclose(nckd[i], 16.0 * (qt * np.log(qt / qs)).sum(), atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_decomposes_into_tckd_plus_weighted_nckd(temperature):
    """Eq. (1) of the paper: KD = TCKD + (1 - p_target^T) * NCKD."""
    t, s, y = _logits(9), _logits(10), _labels(11)
    tckd, nckd = (_np(v) for v in decoupled_kd_terms(t, s, y, temperature))
    p_target = np_softmax(t / temperature)[np.arange(8), y]
    kd = _np(soft_target_kl(t, s, temperature))
    np.testing.assert_allclose(tckd + (1.0 - p_target) * nckd, kd, atol=1e-5, rtol=1e-5)


def test_confident_logits_are_finite_where_log_of_probabilities_would_not_be():
    t, s, y = _logits(12, scale=60.0), _logits(13, scale=60.0), _labels(14)
    s[np.arange(8), y] = -200.0  # student puts ~exp(-250) on the target: log(p) underflows
    got = _np(decoupled_kd(t, s, y, 1.0, 8.0, 1.0))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, np_dkd(t, s, y, 1.0, 8.0, 1.0), atol=1e-5, rtol=1e-5)
    var = tf.Variable(s)
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(decoupled_kd(t, var, y, 1.0, 8.0, 1.0))
    assert np.all(np.isfinite(tape.gradient(value, var).numpy()))


def test_target_is_excluded_exactly_even_when_it_dominates_by_more_than_1000_t():
    t, s = _logits(15, (2, 4)), _logits(16, (2, 4))
    y = np.array([1, 3])
    t[np.arange(2), y] = 5000.0  # the official `- 1000` would leave the target in NCKD
    _, nckd = decoupled_kd_terms(t, s, y, 1.0)
    keep = [np.arange(4) != target for target in y]
    for i in range(2):
        qt, qs = np_softmax(t[i : i + 1, keep[i]])[0], np_softmax(s[i : i + 1, keep[i]])[0]
        np.testing.assert_allclose(_np(nckd)[i], (qt * np.log(qt / qs)).sum(), atol=1e-5)


def test_integer_column_and_one_hot_labels_agree():
    t, s, y = _logits(17), _logits(18), _labels(19)
    ids = _np(decoupled_kd(t, s, y))
    column = _np(decoupled_kd(t, s, y[:, None].astype("int32")))
    one_hot = _np(decoupled_kd(t, s, np.eye(6, dtype="float32")[y]))
    smoothed = _np(decoupled_kd(t, s, 0.9 * np.eye(6, dtype="float32")[y] + 0.1 / 6))
    np.testing.assert_allclose(column, ids, atol=1e-6)
    np.testing.assert_allclose(one_hot, ids, atol=1e-6)
    np.testing.assert_allclose(smoothed, ids, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_identical_logits_give_zero(temperature):
    t, y = _logits(20, scale=30.0), _labels(21)
    np.testing.assert_allclose(_np(decoupled_kd(t, t, y, 1.0, 8.0, temperature)), 0.0, atol=1e-5)


def test_sequence_logits_give_per_position_values():
    t, s = _logits(22, (2, 5, 7)), _logits(23, (2, 5, 7))
    y = np.random.default_rng(24).integers(0, 7, size=(2, 5))
    got = _np(decoupled_kd(t, s, y, 1.0, 8.0, 4.0))
    assert got.shape == (2, 5)
    expected = np_dkd(t.reshape(10, 7), s.reshape(10, 7), y.reshape(10), 1.0, 8.0, 4.0)
    np.testing.assert_allclose(got.reshape(10), expected, atol=1e-5, rtol=1e-5)


def test_bad_labels_and_too_few_classes_are_refused():
    t, s = _logits(25), _logits(26)
    with pytest.raises(ValueError, match="labels"):
        decoupled_kd(t, s, np.zeros((8, 2, 3), "int32"))
    with pytest.raises(ValueError, match="One-hot"):
        decoupled_kd(t, s, np.zeros((8, 5), "float32"))
    with pytest.raises(ValueError, match="2 classes"):
        decoupled_kd(t[:, :1], s[:, :1], np.zeros(8, "int32"))


def test_layer_needs_labels_and_refuses_a_call_without_them():
    loss = DecoupledKD()
    assert loss.needs_labels() is True
    assert loss.output_family() == "categorical"
    assert SoftTargetDistillation().needs_labels() is False  # the base default
    with pytest.raises(ValueError, match="labels=y"):
        loss((_logits(27),), (_logits(28),))


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_logit_standardization_matches_numpy(temperature):
    # Standardized logits lie in about [-2, 2], so at high T the values are small next to the
    # float32 rounding of T^2 * KL (~T^2 * 6e-8 * |log-sum-exp|, as for soft_target_kl and the
    # official code in float32): a student that disagrees with the teacher keeps them large,
    # and the reference is matched to 1e-4 relative (the precedent of test_soft_target).
    t, y = _logits(29, scale=5.0), _labels(31)
    s = -t + _logits(30, scale=2.0)
    loss = DecoupledKD(alpha=1.0, beta=8.0, temperature=temperature, logit_standardization=True)
    expected = np_dkd(np_standardize(t), np_standardize(s), y, 1.0, 8.0, temperature)
    got = _np(loss((t,), (s,), labels=y))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)
    # standardization removes the scale: the teacher's logits x 10 give the same loss
    again = _np(loss((10.0 * t,), (s,), labels=y))
    np.testing.assert_allclose(again, expected, atol=1e-5, rtol=1e-4)
    # the authors' recipe multiplies alpha and beta by 9
    nine = DecoupledKD(alpha=9.0, beta=72.0, temperature=temperature, logit_standardization=True)
    np.testing.assert_allclose(_np(nine((t,), (s,), labels=y)), 9.0 * got, rtol=1e-6)


def test_warmup_factor_scales_the_loss_and_is_read_at_call_time():
    t, s, y = _logits(32), _logits(33), _labels(34)
    loss = DecoupledKD(temperature=4.0)
    assert not loss.warmup_factor.trainable
    assert float(_np(loss.warmup_factor)) == 1.0
    fn = tf.function(lambda a, b, c: loss((a,), (b,), labels=c))
    full = fn(t, s, y).numpy()
    loss.warmup_factor.assign(0.25)
    quarter = fn(t, s, y).numpy()  # same trace
    np.testing.assert_allclose(quarter, 0.25 * full, rtol=1e-6)
    np.testing.assert_allclose(full, np_dkd(t, s, y, 1.0, 8.0, 4.0), atol=1e-5, rtol=1e-5)


def test_dkd_warmup_callback_follows_the_official_schedule():
    """mdistiller: min(epoch / warmup, 1.0) with epochs counted from 1."""
    loss = DecoupledKD()
    callback = DKDWarmup(loss, epochs=4)
    seen = []
    for keras_epoch in range(6):
        callback.on_epoch_begin(keras_epoch)
        seen.append(float(_np(loss.warmup_factor)))
        official_epoch = keras_epoch + 1
        assert seen[-1] == pytest.approx(min(official_epoch / 4, 1.0))
    assert seen == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    logs = {}
    callback.on_epoch_end(5, logs)
    assert logs == {"dkd_warmup": 1.0}


def test_dkd_warmup_callback_runs_inside_fit():
    loss = DecoupledKD()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    x, y = np.zeros((4, 3), "float32"), np.zeros((4, 2), "float32")
    history = model.fit(x, y, epochs=3, verbose=0, callbacks=[DKDWarmup(loss, epochs=20)])
    assert history.history["dkd_warmup"] == pytest.approx([0.05, 0.10, 0.15])


def test_dkd_warmup_refuses_bad_arguments():
    with pytest.raises(TypeError, match="DecoupledKD"):
        DKDWarmup(SoftTargetDistillation())
    with pytest.raises(ValueError, match="epochs"):
        DKDWarmup(DecoupledKD(), epochs=0)
    with pytest.raises(TypeError, match="epochs"):
        DKDWarmup(DecoupledKD(), epochs=2.5)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature_raises_value_error(bad):
    with pytest.raises(ValueError, match="temperature"):
        DecoupledKD(temperature=bad)


@pytest.mark.parametrize(
    "kwargs,error",
    [
        ({"alpha": -1.0}, ValueError),
        ({"beta": float("nan")}, ValueError),
        ({"beta": float("inf")}, ValueError),
        ({"alpha": "1"}, TypeError),
        ({"alpha": 0.0, "beta": 0.0}, ValueError),
        ({"warmup_factor": 1.5}, ValueError),
        ({"logit_standardization": 1}, TypeError),
        ({"temperature": "4"}, TypeError),
    ],
)
def test_bad_arguments_are_refused(kwargs, error):
    with pytest.raises(error):
        DecoupledKD(**kwargs)


def test_registry_and_config_round_trip():
    assert REGISTRY["dkd"] is DecoupledKD
    assert isinstance(get("dkd"), DecoupledKD)
    loss = DecoupledKD(alpha=2.0, beta=0.5, temperature=1.5, logit_standardization=True,
                       name="dkd")
    loss.temperature.assign(2.0)
    loss.warmup_factor.assign(0.5)
    config = loss.get_config()
    assert config["alpha"] == 2.0 and config["beta"] == 0.5
    assert config["temperature"] == 2.0 and config["warmup_factor"] == 0.5
    assert config["logit_standardization"] is True
    restored = DecoupledKD.from_config(config)
    assert restored.name == "dkd" and restored.logit_standardization is True
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(again, DecoupledKD)
    t, s, y = _logits(35), _logits(36), _labels(37)
    expected = 0.5 * np_dkd(np_standardize(t), np_standardize(s), y, 2.0, 0.5, 2.0)
    np.testing.assert_allclose(_np(again((t,), (s,), labels=y)), expected, atol=1e-5, rtol=1e-5)
