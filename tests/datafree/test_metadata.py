"""Lopes et al. activation metadata: objectives vs NumPy, statistics, file round trip, refusals."""

from __future__ import annotations

import json
import warnings

import keras
import numpy as np
import pytest

from keras_kd.datafree import (
    KINDS,
    ActivationMetadata,
    all_layers_matching,
    reconstruct,
    spectral_matching,
    top_layer_matching,
)
from keras_kd.datafree.metadata import (
    chain_adjacency,
    graph_fourier_basis,
    largest_coefficients,
)

ATOL = 1e-5


def relu(a):
    return np.maximum(a, 0.0)


def small_mlp(seed: int = 0, name: str = "mlp") -> keras.Model:
    """6 -> 8 -> 8 -> 4 logits, Dense layers followed by separate ReLU layers."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, name="d0")(inputs)
    h = keras.layers.ReLU(name="r0")(h)
    h = keras.layers.Dense(8, name="d1")(h)
    h = keras.layers.ReLU(name="r1")(h)
    outputs = keras.layers.Dense(4, name="logits")(h)
    return keras.Model(inputs, outputs, name=name)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = np.arange(64) % 4
    return x, y


def test_top_layer_matching_equals_numpy():
    rng = np.random.default_rng(1)
    c, h = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    got = np.asarray(top_layer_matching(c, h))
    np.testing.assert_allclose(got, ((relu(c) - relu(h)) ** 2).mean(axis=1), atol=ATOL)


def test_all_layers_matching_equals_numpy():
    rng = np.random.default_rng(2)
    cs = [rng.normal(size=(3, n)) for n in (7, 5, 2)]
    hs = [rng.normal(size=(3, n)) for n in (7, 5, 2)]
    expected = sum(((relu(c) - relu(h)) ** 2).mean(axis=1) / c.shape[1] for c, h in zip(cs, hs))
    got = np.asarray(all_layers_matching(cs, hs))
    np.testing.assert_allclose(got, expected, atol=ATOL)


def test_spectral_matching_equals_numpy():
    # Lopes et al.: s_bar = F^-1 (kept coefficients, zeros), l = sum_i (s_bar - s_i)^2.
    rng = np.random.default_rng(3)
    bases = [np.linalg.qr(rng.normal(size=(6, 6)))[0][:, :2],
             np.linalg.qr(rng.normal(size=(9, 9)))[0][:, :3]]
    signals = [rng.normal(size=(4, 6)), rng.normal(size=(4, 9))]
    cs = [rng.normal(size=(4, 2)), rng.normal(size=(4, 3))]
    expected = sum(((c @ u.T - h) ** 2).sum(axis=1) for c, h, u in zip(cs, signals, bases))
    got = np.asarray(spectral_matching(cs, signals, bases))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # With orthonormal columns: the kept coefficients are matched, the rest pushed to zero.
    split = sum(((c - h @ u) ** 2).sum(1) + ((h - h @ u @ u.T) ** 2).sum(1)
                for c, h, u in zip(cs, signals, bases))
    np.testing.assert_allclose(got, split, rtol=1e-5)


def test_graph_fourier_basis_diagonalises_the_adjacency():
    rng = np.random.default_rng(4)
    w1, w2 = rng.normal(size=(3, 4)), rng.normal(size=(4, 2))
    a = np.zeros((9, 9))
    a[0:3, 3:7], a[3:7, 7:9] = w1, w2  # signed weights, as in the paper's A
    a = a + a.T
    np.testing.assert_array_equal(chain_adjacency([w1, w2]), a)
    basis = graph_fourier_basis([w1, w2])
    values = np.linalg.eigvalsh(a)[::-1]
    assert basis.shape == (9, 9)
    np.testing.assert_allclose(basis.T @ basis, np.eye(9), atol=1e-8)
    np.testing.assert_allclose(basis.T @ a @ basis, np.diag(values), atol=1e-8)


def test_largest_coefficients_per_class():
    mean = np.array([[0.1, -3.0, 2.0, 0.0], [5.0, 0.2, -0.1, 0.3]])
    np.testing.assert_array_equal(largest_coefficients(mean, 2),
                                  [[False, True, True, False], [True, False, False, True]])


def numpy_activations(model, x, temperature):
    d0 = model.get_layer("d0")
    d1 = model.get_layer("d1")
    top = model.get_layer("logits")
    h0 = x @ np.asarray(d0.kernel) + np.asarray(d0.bias)
    h1 = relu(h0) @ np.asarray(d1.kernel) + np.asarray(d1.bias)
    z = relu(h1) @ np.asarray(top.kernel) + np.asarray(top.bias)
    return [h0, h1, z / temperature]


def test_recorded_statistics_equal_numpy(data):
    x, y = data
    model = small_mlp()
    acts = numpy_activations(model, x.astype(np.float64), 8.0)
    meta = ActivationMetadata.record(model, x, y, kind="all_layers", batch_size=16)
    assert [name for name, _ in meta.layers] == ["d0", "d1", "logits"]
    np.testing.assert_array_equal(meta.counts, [16] * 4)
    for block, a in zip(meta.blocks, acts):
        for c in range(4):
            np.testing.assert_allclose(block["mean"][c], a[y == c].mean(0), atol=1e-5)
            std = (block["std"][c] if block.get("std") is not None  # the top layer: a cov
                   else np.sqrt(np.diag(block["cov"][c])))
            np.testing.assert_allclose(std, a[y == c].std(0), atol=1e-4)
    top = ActivationMetadata.record(model, x, y, kind="top_layer").blocks[0]
    for c in range(4):
        centred = acts[-1][y == c] - acts[-1][y == c].mean(0)
        np.testing.assert_allclose(top["cov"][c], centred.T @ centred / 16, atol=1e-5)


def test_all_layers_covariances_equal_numpy(data):
    x, y = data
    model = small_mlp()
    acts = numpy_activations(model, x.astype(np.float64), 8.0)
    diagonal = ActivationMetadata.record(model, x, y, kind="all_layers")
    assert [b.get("cov") is not None for b in diagonal.blocks] == [False, False, True]
    full = ActivationMetadata.record(model, x, y, kind="all_layers", hidden_covariance=True)
    for block, a in zip(full.blocks, acts):
        for c in range(4):
            centred = a[y == c] - a[y == c].mean(0)
            np.testing.assert_allclose(block["cov"][c], centred.T @ centred / 16, atol=1e-4)
    sample = full.sampler()(np.array([0, 1, 2, 3]), np.random.default_rng(0))
    assert [v.shape for v in sample] == [(4, 8), (4, 8), (4, 4)]


def test_spectral_statistics_keep_each_class_largest_coefficients(data):
    x, y = data
    model = small_mlp()
    acts = numpy_activations(model, x.astype(np.float64), 8.0)
    kernels = [np.asarray(model.get_layer(n).kernel) for n in ("d1", "logits")]
    meta = ActivationMetadata.record(model, x, y, kind="spectral_all_layers",
                                     spectral_fraction=0.25)
    basis = graph_fourier_basis(kernels)  # 8 + 8 + 4 = 20 vertices
    coefficients = np.concatenate(acts, axis=1) @ basis
    mean = np.stack([coefficients[y == c].mean(0) for c in range(4)])
    std = np.stack([coefficients[y == c].std(0) for c in range(4)])
    keep = largest_coefficients(mean, 5)  # ceil(0.25 * 20) per class
    union = np.flatnonzero(keep.any(0))
    block = meta.blocks[0]
    assert block["size"] == union.size and block["basis"].shape == (20, union.size)
    np.testing.assert_allclose(np.abs(block["basis"]), np.abs(basis[:, union]), atol=1e-5)
    signs = np.sign(np.sum(block["basis"] * basis[:, union], axis=0))  # eigenvector signs
    np.testing.assert_allclose(block["mean"] * signs, np.where(keep, mean, 0)[:, union],
                               atol=1e-4)
    np.testing.assert_allclose(block["std"], np.where(keep, std, 0)[:, union], atol=1e-4)
    # Sampled coefficients are zero where a class keeps none (the zero-padded transform).
    sample = meta.sampler()(np.array([0, 1, 2, 3]), np.random.default_rng(0))[0]
    np.testing.assert_array_equal(sample[~keep[:, union]], 0.0)
    pairs = ActivationMetadata.record(model, x, y, kind="spectral_layer_pairs")
    assert [b["sources"] for b in pairs.blocks] == [[0, 1], [1, 2]]
    assert [b["basis"].shape[0] for b in pairs.blocks] == [16, 12]


@pytest.mark.parametrize("kind", KINDS)
def test_saved_file_round_trips(tmp_path, data, kind):
    x, y = data
    model = small_mlp()
    meta = ActivationMetadata.record(model, x, y, kind=kind)
    size = meta.save(tmp_path / "teacher.meta.npz")
    assert 0 < size < 64_000
    loaded = ActivationMetadata.load(tmp_path / "teacher.meta.npz")
    assert (loaded.kind, loaded.temperature, loaded.num_classes) == (kind, 8.0, 4)
    assert loaded.layers == meta.layers and loaded.model == meta.model
    np.testing.assert_array_equal(loaded.counts, meta.counts)
    for a, b in zip(meta.blocks, loaded.blocks):
        for key in ("mean", "std", "cov", "basis"):
            if a.get(key) is None:
                assert b.get(key) is None
            else:
                np.testing.assert_array_equal(np.asarray(a[key], np.float32), b[key])
    with np.load(tmp_path / "teacher.meta.npz") as raw:
        assert json.loads(str(raw["meta"]))["format"] == "keras_kd.activation_metadata/2"


def test_reconstruction_lowers_the_objective_and_is_seeded(data, tmp_path):
    x, y = data
    model = small_mlp()
    meta = ActivationMetadata.record(model, x, y, kind="top_layer", temperature=1.0)
    one = reconstruct(model, meta, 12, batch_size=4, steps=1, learning_rate=0.05, seed=3,
                      verbose=0)
    many = reconstruct(model, meta, 12, batch_size=4, steps=60, learning_rate=0.05, seed=3,
                       verbose=0)
    again = reconstruct(model, meta, 12, batch_size=4, steps=60, learning_rate=0.05, seed=3,
                        verbose=0)
    np.testing.assert_array_equal(many.x, again.x)
    np.testing.assert_array_equal(many.y, one.y)
    assert sorted(np.bincount(many.y, minlength=4)) == [3, 3, 3, 3]
    # The teacher's predictions move to the sampled classes as the objective falls.
    predicted = np.argmax(np.asarray(model(many.x)), axis=1)
    assert (predicted == many.y).mean() >= (np.argmax(np.asarray(model(one.x)), 1)
                                            == one.y).mean()


def test_metadata_from_another_model_is_refused(data):
    x, y = data
    meta = ActivationMetadata.record(small_mlp(0, "a"), x, y, kind="top_layer")
    other = small_mlp(1, "b")
    with pytest.raises(ValueError, match="recorded from the model 'a'.*record new metadata"):
        reconstruct(other, meta, 4, batch_size=4, steps=1, verbose=0)


def test_bad_arguments_are_refused_before_work(data, tmp_path):
    x, y = data
    model = small_mlp()
    with pytest.raises(ValueError, match="kind must be one of"):
        ActivationMetadata.record(model, x, y, kind="every_layer")
    with pytest.raises(ValueError, match="y is required"):
        ActivationMetadata.record(model, x)
    with pytest.raises(ValueError, match="does not have"):
        ActivationMetadata.record(model, x, y, layers=["nope"])
    with pytest.raises(ValueError, match="temperature must be a finite real number > 0"):
        ActivationMetadata.record(model, x, y, temperature=0)
    with pytest.raises(ValueError, match=r"class ids in \[0, 4\)"):
        ActivationMetadata.record(model, x, y + 4)
    meta = ActivationMetadata.record(model, x, y, kind="top_layer")
    with pytest.raises(ValueError, match="path must end in '.npz'"):
        meta.save(tmp_path / "meta.bin")
    with pytest.raises(TypeError, match="metadata must be an ActivationMetadata"):
        reconstruct(model, {"kind": "top_layer"}, 4)
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a keras_kd activation metadata file"):
        ActivationMetadata.load(tmp_path / "other.npz")
    with pytest.raises(TypeError, match="hidden_covariance must be one of"):
        ActivationMetadata.record(model, x, y, hidden_covariance="yes")


def test_older_format_loads_except_spectral(data, tmp_path):
    x, y = data
    model = small_mlp()
    for kind in ("all_layers", "spectral_layer_pairs"):
        path = tmp_path / f"{kind}.npz"
        ActivationMetadata.record(model, x, y, kind=kind).save(path)
        with np.load(path) as raw:
            arrays = dict(raw)
        meta = json.loads(str(arrays["meta"]))
        meta["format"] = "keras_kd.activation_metadata/1"
        arrays["meta"] = np.array(json.dumps(meta))
        np.savez(path, **arrays)
        if kind == "all_layers":
            assert ActivationMetadata.load(path).kind == "all_layers"
        else:
            with pytest.raises(ValueError, match="older format.*Record it again"):
                ActivationMetadata.load(path)


def test_spectral_kinds_refuse_conv_layers(data):
    inputs = keras.Input((4, 4, 1))
    h = keras.layers.Conv2D(2, 3, name="conv")(inputs)
    h = keras.layers.Flatten()(h)
    model = keras.Model(inputs, keras.layers.Dense(4, name="logits")(h))
    x = np.random.default_rng(0).normal(size=(8, 4, 4, 1)).astype("float32")
    with pytest.raises(ValueError, match="chain of Dense layers.*kind='all_layers'"):
        ActivationMetadata.record(model, x, np.arange(8) % 4, kind="spectral_all_layers")
    meta = ActivationMetadata.record(model, x, np.arange(8) % 4, kind="all_layers")
    assert meta.layers[0] == ("conv", (2, 2, 2))


def test_checkpoint_resumes_and_stops_early(data, tmp_path):
    x, y = data
    model = small_mlp()
    meta = ActivationMetadata.record(model, x, y, kind="top_layer")
    kwargs = dict(batch_size=4, steps=3, seed=1, verbose=0, checkpoint_dir=tmp_path / "run")
    full = reconstruct(model, meta, 12, **kwargs)
    assert full.complete and len(sorted((tmp_path / "run").glob("batch_*.npz"))) == 3
    (tmp_path / "run" / "batch_000002.npz").unlink()
    resumed = reconstruct(model, meta, 12, **kwargs)
    np.testing.assert_array_equal(full.x, resumed.x)
    with pytest.raises(ValueError, match="holds batches of another run"):
        reconstruct(model, meta, 12, **dict(kwargs, seed=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        partial = reconstruct(model, meta, 40, batch_size=4, steps=2, verbose=0,
                              time_limit=1e-9)
    assert not partial.complete and len(partial) == 4  # the first batch always runs


@pytest.mark.parametrize("kind", ["all_layers", "spectral_all_layers", "spectral_layer_pairs"])
def test_reconstruction_runs_for_every_kind(data, kind):
    x, y = data
    model = small_mlp()
    meta = ActivationMetadata.record(model, x, y, kind=kind)
    out = reconstruct(model, meta, 8, batch_size=4, steps=2, seed=0, verbose=0)
    assert out.x.shape == (8, 6) and np.all(np.isfinite(out.x))
