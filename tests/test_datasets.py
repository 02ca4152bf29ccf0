"""keras_kd.datasets: offline TFDS builds from the shipped / shared files, with real data checks.

MNIST and Fashion-MNIST are built once per session into one temporary data_dir (~15 s each), so
the Fashion-MNIST test also proves the two builds do not reuse each other's extracted files.
"""

import contextlib
import hashlib
import io
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_kd import datasets

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
FASHION_DIR = SHARED_DATA / "fashion_mnist"
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds_data")


@pytest.fixture(scope="module")
def mnist_build(data_dir, tmp_path_factory):
    """Builds MNIST from the shipped files (no manual_dir, no network) and reads both splits.

    Records what the build printed and which folders it left in the temporary directory.
    """
    watched = tmp_path_factory.mktemp("tempdir")
    out, err = io.StringIO(), io.StringIO()
    previous = tempfile.tempdir
    tempfile.tempdir = str(watched)
    try:
        prepared_before = datasets.is_prepared("mnist", data_dir)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            arrays = {
                split: datasets.load_arrays("mnist", split, data_dir=data_dir)
                for split in ("train", "test")
            }
    finally:
        tempfile.tempdir = previous
    return {
        "arrays": arrays,
        "stdout": out.getvalue(),
        "stderr": err.getvalue(),
        "left_in_tempdir": sorted(p.name for p in watched.iterdir()),
        "prepared_before": prepared_before,
        "prepared_after": datasets.is_prepared("mnist", data_dir),
    }


@pytest.fixture(scope="module")
def mnist_arrays(mnist_build):
    return mnist_build["arrays"]


def _pairs(images: np.ndarray, labels: np.ndarray) -> dict[bytes, int]:
    """image bytes -> label (all MNIST / Fashion-MNIST images in a split are distinct)."""
    return {img.tobytes(): int(lab) for img, lab in zip(images, labels)}


def _idx_split(directory: Path, split: str):
    prefix = "train" if split == "train" else "t10k"
    x = datasets.read_idx(directory / f"{prefix}-images-idx3-ubyte.gz")
    y = datasets.read_idx(directory / f"{prefix}-labels-idx1-ubyte.gz")
    return x, y


def test_read_idx_matches_readme_facts():
    x, y = _idx_split(datasets.SHIPPED_MNIST_DIR, "train")
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (60000,) and y.dtype == np.uint8
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert np.bincount(y).tolist() == MNIST_TRAIN_COUNTS
    x_test, y_test = _idx_split(datasets.SHIPPED_MNIST_DIR, "test")
    assert x_test.shape == (10000, 28, 28)
    assert np.bincount(y_test).tolist() == MNIST_TEST_COUNTS


def test_read_idx_rejects_non_idx(tmp_path):
    bad = tmp_path / "labels.bin"
    bad.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX file"):
        datasets.read_idx(bad)


def test_shipped_mnist_files_are_the_canonical_ones():
    """The package data carries the files TFDS's own checksums describe."""
    infos = {info.filename: info for info in tfds.builder_cls("mnist").url_infos.values()}
    assert sorted(infos) == sorted(datasets.required_files("mnist"))
    for filename, info in infos.items():
        data = (datasets.SHIPPED_MNIST_DIR / filename).read_bytes()
        assert len(data) == info.size
        assert hashlib.sha256(data).hexdigest() == info.checksum


def test_mnist_builds_offline_with_real_content(mnist_arrays):
    for split, counts in (("train", MNIST_TRAIN_COUNTS), ("test", MNIST_TEST_COUNTS)):
        x, y = mnist_arrays[split]
        assert x.shape == (len(y), 28, 28, 1) and x.dtype == np.float32
        assert y.dtype == np.int64
        assert x.min() == 0.0 and x.max() == 1.0
        assert np.bincount(y).tolist() == counts
        # TFDS stores examples in its own fixed order: compare (image, label) pairs as a set.
        x_idx, y_idx = _idx_split(datasets.SHIPPED_MNIST_DIR, split)
        tfds_pairs = _pairs(np.round(x[..., 0] * 255).astype(np.uint8), y)
        assert tfds_pairs == _pairs(x_idx, y_idx)
    np.testing.assert_allclose(mnist_arrays["train"][0].mean(), 0.1307, atol=1e-4)
    np.testing.assert_allclose(mnist_arrays["train"][0].std(), 0.3081, atol=1e-4)


def test_build_is_silent_and_leaves_no_temporary_folders(mnist_build):
    assert not mnist_build["prepared_before"] and mnist_build["prepared_after"]
    # TFDS would print "Downloading and preparing dataset ..." (nothing is downloaded), draw
    # progress bars, and leave an empty tmp*tfds folder per builder it creates.
    assert "Downloading" not in mnist_build["stdout"] and "prepared" not in mnist_build["stdout"]
    assert "Dl Completed" not in mnist_build["stderr"]
    assert "Generating" not in mnist_build["stderr"]
    assert mnist_build["left_in_tempdir"] == []


def test_is_prepared_checks_the_name(tmp_path):
    assert not datasets.is_prepared("fashion_mnist", tmp_path)
    with pytest.raises(ValueError, match="name must be one of"):
        datasets.is_prepared("imagenet", tmp_path)


def test_load_returns_scaled_batched_dataset(data_dir, mnist_arrays):
    ds = datasets.load("mnist", "test", data_dir=data_dir, batch_size=32)
    image_spec, label_spec = ds.element_spec
    assert image_spec.shape.as_list() == [None, 28, 28, 1] and image_spec.dtype == tf.float32
    assert label_spec.dtype == tf.int64
    x, y = next(iter(ds))
    np.testing.assert_array_equal(x.numpy(), mnist_arrays["test"][0][:32])
    np.testing.assert_array_equal(y.numpy(), mnist_arrays["test"][1][:32])
    sliced = datasets.load("mnist", "test[:100]", data_dir=data_dir)
    assert sum(1 for _ in sliced) == 100


def test_missing_sources_error_says_what_to_pass(tmp_path):
    empty_data_dir = tmp_path / "data"
    with pytest.raises(FileNotFoundError) as info:
        datasets.load("fashion_mnist", "train", data_dir=empty_data_dir)
    message = str(info.value)
    assert "no manual_dir was given" in message
    assert "manual_dir=<a directory holding" in message
    assert "train-images-idx3-ubyte.gz" in message and "download=True" in message

    partial = tmp_path / "manual"
    partial.mkdir()
    (partial / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="lacks t10k-images-idx3-ubyte.gz"):
        datasets.load("fashion_mnist", "train", data_dir=empty_data_dir, manual_dir=partial)
    with pytest.raises(FileNotFoundError, match="prepare_cifar10_manual_dir"):
        datasets.load("cifar10", "train", data_dir=empty_data_dir)
    assert not (empty_data_dir / "fashion_mnist" / "3.0.1" / "dataset_info.json").exists()


def test_unknown_name_and_bad_batch_size_raise(data_dir):
    with pytest.raises(ValueError, match="name must be one of"):
        datasets.load("imagenet", "train", data_dir=data_dir)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        datasets.load("mnist", "train", data_dir=data_dir, batch_size=0)
    with pytest.raises(TypeError, match="shuffle_buffer must be a positive integer"):
        datasets.load("mnist", "train", data_dir=data_dir, shuffle_buffer=1.5)


def test_seeded_shuffle_gives_the_same_order_twice(data_dir, mnist_arrays):
    def first_labels(seed):
        ds = datasets.load("mnist", "test", data_dir=data_dir, batch_size=50,
                           shuffle_buffer=10_000, seed=seed)
        return next(iter(ds))[1].numpy()

    np.testing.assert_array_equal(first_labels(7), first_labels(7))
    assert not np.array_equal(first_labels(7), first_labels(8))


def test_default_data_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path))
    assert datasets.default_data_dir() == str(tmp_path)
    monkeypatch.delenv(datasets.DATA_DIR_ENV)
    assert datasets.default_data_dir().endswith("tensorflow_datasets")


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="shared Fashion-MNIST files are absent")
def test_fashion_mnist_from_manual_dir_is_not_mnist(data_dir, mnist_arrays):
    """Built in the same data_dir right after MNIST: must hold Fashion-MNIST, not MNIST again."""
    x, y = datasets.load_arrays(
        "fashion_mnist", "test", data_dir=data_dir, manual_dir=FASHION_DIR, normalize=False
    )
    assert x.shape == (10000, 28, 28, 1) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [1000] * 10
    x_idx, y_idx = _idx_split(FASHION_DIR, "test")
    assert _pairs(x[..., 0], y) == _pairs(x_idx, y_idx)
    # Once prepared, no manual_dir is needed any more.
    x_again, _ = datasets.load_arrays("fashion_mnist", "test[:5]", data_dir=data_dir)
    np.testing.assert_allclose(x_again, x[:5] / 255.0, atol=1e-7)


def _tiny_cifar_npz(path: Path, n_train: int = 10, n_test: int = 5):
    rng = np.random.default_rng(0)
    blobs, offsets, arrays = {}, {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        encoded = [tf.io.encode_jpeg(img, quality=90).numpy() for img in images]
        blobs[split] = np.frombuffer(b"".join(encoded), np.uint8)
        offsets[split] = np.cumsum([0] + [len(e) for e in encoded]).astype(np.int64)
        arrays[split] = np.stack(
            [
                tf.io.decode_jpeg(e, channels=3, dct_method="INTEGER_ACCURATE").numpy()
                for e in encoded
            ]
        )
    labels = {"train": np.arange(n_train) % 10, "test": (np.arange(n_test) * 3) % 10}
    np.savez(
        path,
        train_jpeg=blobs["train"],
        train_offsets=offsets["train"],
        test_jpeg=blobs["test"],
        test_offsets=offsets["test"],
        y_train=labels["train"].astype(np.uint8),
        y_test=labels["test"].astype(np.uint8),
    )
    return arrays, labels


def test_prepare_cifar10_manual_dir_writes_binary_layout_tfds_accepts(tmp_path):
    arrays, labels = _tiny_cifar_npz(tmp_path / "tiny.npz")
    manual = datasets.prepare_cifar10_manual_dir(tmp_path / "tiny.npz", tmp_path / "manual")
    with tarfile.open(manual / "cifar-10-binary.tar.gz") as tar:
        names = sorted(m.name for m in tar.getmembers())
        record = tar.extractfile("cifar-10-batches-bin/data_batch_2.bin").read()
        meta = tar.extractfile("cifar-10-batches-bin/batches.meta.txt").read().decode()
    assert names == sorted(
        [f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)]
        + ["cifar-10-batches-bin/test_batch.bin", "cifar-10-batches-bin/batches.meta.txt"]
    )
    assert meta.split()[:2] == ["airplane", "automobile"]
    # data_batch_2 holds train images 2 and 3: <label><1024 R><1024 G><1024 B> each.
    assert len(record) == 2 * 3073 and record[0] == labels["train"][2]
    red = np.frombuffer(record[1:1025], np.uint8).reshape(32, 32)
    np.testing.assert_array_equal(red, arrays["train"][2][..., 0])

    # TFDS builds cifar10 from this (non-canonical) tarball offline; the checksum override is
    # undone afterwards.
    cls = tfds.builder_cls("cifar10")
    before = dict(cls.url_infos)
    x, y = datasets.load_arrays(
        "cifar10", "test", data_dir=tmp_path / "data", manual_dir=manual, normalize=False
    )
    assert dict(cls.url_infos) == before
    assert x.shape == (5, 32, 32, 3) and x.dtype == np.uint8
    assert _pairs(x, y) == _pairs(arrays["test"], labels["test"])


def test_concurrent_prepare_builds_once(tmp_path, monkeypatch):
    """Two callers preparing the same dataset at once: the second waits for the first's build
    (a file lock in data_dir) instead of building into the same TFDS folder and failing."""
    version = str(tfds.builder_cls("mnist").VERSION)
    building = threading.Event()
    builds = []

    def fake_build(name, manual_dir, data_dir, verbose=False):
        builds.append(threading.current_thread().name)
        building.set()
        time.sleep(0.5)  # the second caller arrives while this build runs
        marker = Path(data_dir) / name / version / "dataset_info.json"
        marker.parent.mkdir(parents=True)
        marker.write_text("{}")

    monkeypatch.setattr(datasets, "_build_offline", fake_build)
    monkeypatch.setattr(datasets, "_builder", lambda name, data_dir: name)
    results = {}

    def call(tag):
        results[tag] = datasets.prepare("mnist", tmp_path)

    first = threading.Thread(target=call, args=("first",), name="first")
    first.start()
    assert building.wait(10)
    second = threading.Thread(target=call, args=("second",), name="second")
    second.start()
    first.join(10)
    second.join(10)
    assert builds == ["first"]
    assert results == {"first": "mnist", "second": "mnist"}
