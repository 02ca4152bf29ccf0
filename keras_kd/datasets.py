"""Image-classification datasets through TensorFlow Datasets, buildable offline.

`load(name, split)` returns a `tf.data.Dataset` of `(image, label)` for `"mnist"`,
`"fashion_mnist"` and `"cifar10"`. Images are `float32` in `[0, 1]` (the uint8 pixels divided by
255, no mean/std standardisation), shaped `(28, 28, 1)` or `(32, 32, 3)`; labels are `int64`
class ids. The data always goes through TFDS: the first call builds the TFRecords in `data_dir`
(about 15 s for MNIST), later calls only read them.

Offline: TFDS picks the source files from `manual_dir` instead of downloading them. The package
ships the four canonical MNIST `.gz` files (`keras_kd/data/mnist/`), so `load("mnist", "train")`
needs neither network nor arguments. For Fashion-MNIST pass the directory of its four `.gz`
files; for CIFAR-10 a directory holding `cifar-10-binary.tar.gz` (see
`prepare_cifar10_manual_dir`). Nothing is downloaded unless `download=True` is passed.

The build is silent unless `verbose=True`: TFDS's progress bars, its "Downloading and preparing
dataset" message (printed even when nothing is downloaded) and its log lines are held back while
it builds, and the temporary folders TFDS creates are removed afterwards. Several processes
may ask for the same unbuilt dataset at once: the first builds it, the others wait for it (a
file lock in `data_dir`) and then read it.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_kd import validation

SUPPORTED = ("mnist", "fashion_mnist", "cifar10")
DATA_DIR_ENV = "KERAS_KD_DATA_DIR"
SHIPPED_MNIST_DIR = Path(__file__).resolve().parent / "data" / "mnist"

_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
_CIFAR10_TARBALL = "cifar-10-binary.tar.gz"
_CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (the MNIST / Fashion-MNIST format), gzipped or not.

    Args:
        path: path of a `*-idx{1,3}-ubyte[.gz]` file.

    Returns:
        A uint8 array, e.g. `(60000, 28, 28)` for images or `(60000,)` for labels.

    Raises:
        ValueError: if the file is not an unsigned-byte IDX file.

    Example:
        >>> y = read_idx("keras_kd/data/mnist/train-labels-idx1-ubyte.gz")   # (60000,) uint8
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic {data[:4]!r}).")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def default_data_dir() -> str:
    """Where prepared TFRecords live: `$KERAS_KD_DATA_DIR`, else `~/tensorflow_datasets`."""
    return os.environ.get(DATA_DIR_ENV) or os.path.expanduser("~/tensorflow_datasets")


def _check_name(name: str) -> None:
    validation.one_of("name", name, SUPPORTED)


def required_files(name: str) -> tuple[str, ...]:
    """File names `manual_dir` must hold for `name` (as in TFDS's url_checksums)."""
    import tensorflow_datasets as tfds

    _check_name(name)
    return tuple(sorted(info.filename for info in tfds.builder_cls(name).url_infos.values()))


def _builder(name: str, data_dir: str | os.PathLike | None):
    import tensorflow_datasets as tfds

    return tfds.builder(name, data_dir=os.fspath(data_dir or default_data_dir()))


def is_prepared(name: str, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether `name` is already built in `data_dir`, so loading it reads files and builds nothing.

    Args:
        name: `"mnist"`, `"fashion_mnist"` or `"cifar10"`.
        data_dir: TFDS data directory (default `default_data_dir()`).

    Raises:
        ValueError: for an unknown `name` (`TypeError` if it is not a string).

    Example:
        >>> if not keras_kd.datasets.is_prepared("mnist"):
        ...     print("Building MNIST once (about 15 s)")
    """
    import tensorflow_datasets as tfds

    _check_name(name)
    # The supported datasets have no builder configs: TFDS keeps them in data_dir/name/version.
    version = str(tfds.builder_cls(name).VERSION)
    root = Path(os.fspath(data_dir or default_data_dir()))
    return (root / name / version / "dataset_info.json").is_file()


def _missing_sources_error(name: str, data_dir, manual_dir, missing) -> FileNotFoundError:
    files = ", ".join(required_files(name))
    where = (
        f"manual_dir={os.fspath(manual_dir)!r} lacks {', '.join(missing)}"
        if manual_dir is not None
        else "no manual_dir was given"
    )
    hint = {
        "mnist": f"the shipped files in {SHIPPED_MNIST_DIR} are the default",
        "fashion_mnist": "the four Fashion-MNIST .gz files of the official distribution",
        "cifar10": (
            "write the tarball from the JPEG npz with "
            "keras_kd.datasets.prepare_cifar10_manual_dir(npz_path, out_dir)"
        ),
    }[name]
    return FileNotFoundError(
        f"'{name}' is not prepared in data_dir={os.fspath(data_dir)!r} and {where}. Pass "
        f"manual_dir=<a directory holding {files}> ({hint}), or download=True to let TFDS "
        "download the files."
    )


def prepare(
    name: str,
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    download: bool = False,
    verbose: bool = False,
):
    """Builds the TFDS dataset `name` in `data_dir` unless it is already there.

    Args:
        name: `"mnist"`, `"fashion_mnist"` or `"cifar10"`.
        data_dir: TFDS data directory (default `default_data_dir()`).
        manual_dir: directory holding the source files named by `required_files(name)`. For
            `"mnist"` it defaults to the files shipped with the package. A CIFAR-10 tarball that
            is not the official one (e.g. from `prepare_cifar10_manual_dir`) is accepted: its
            checksum replaces the official one for this build only.
        download: if True and no manual files are given, TFDS downloads the sources.
        verbose: show TFDS's own messages, log lines and progress bars while it builds. By
            default the build is silent.

    Returns:
        The prepared `tfds.core.DatasetBuilder`.

    Raises:
        ValueError: for an unknown `name` (`TypeError` if it is not a string).
        FileNotFoundError: if the dataset is not prepared, `download` is False and `manual_dir`
            does not hold the source files; the message says what to pass.
    """
    _check_name(name)
    data_dir = os.fspath(data_dir or default_data_dir())
    if is_prepared(name, data_dir):
        return _builder(name, data_dir)
    if manual_dir is None and name == "mnist":
        manual_dir = SHIPPED_MNIST_DIR
    missing = (
        [f for f in required_files(name) if not (Path(manual_dir) / f).is_file()]
        if manual_dir is not None
        else list(required_files(name))
    )
    if missing and not download:
        raise _missing_sources_error(name, data_dir, manual_dir, missing)
    use_manual = manual_dir is not None and not missing
    with _build_lock(name, data_dir):
        # Another process may have built it while this one waited for the lock.
        if not is_prepared(name, data_dir):
            _build_offline(name, manual_dir if use_manual else None, data_dir, verbose)
    return _builder(name, data_dir)


@contextlib.contextmanager
def _build_lock(name: str, data_dir: str):
    """Holds an exclusive lock on `data_dir/.keras_kd_<name>.lock` while `name` is built.

    TFDS gives two processes that build the same dataset into one `data_dir` at once the same
    `incomplete.*` folder to rename, and the second fails with `FileExistsError`. With the lock
    the second waits and then finds the dataset built. POSIX `flock`; where `fcntl` does not
    exist (Windows) no lock is taken.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, f".keras_kd_{name}.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _tfds_build_scope(scratch: str, verbose: bool):
    """While TFDS builds: its throwaway temporary folders go into `scratch`, and unless `verbose`
    its progress bars, printed messages and absl log lines are held back.

    TFDS leaves an empty `/tmp/tmp*tfds` folder behind for every builder it creates on an
    unprepared data_dir (`DatasetInfo.initialize_from_bucket`); with `tempfile.tempdir` pointing
    into `scratch` they are removed with it. Everything changed here is restored on exit.
    """
    from tensorflow_datasets.core.utils import tqdm_utils

    previous_tempdir = tempfile.tempdir
    absl_logger = logging.getLogger("absl")
    previous_level = absl_logger.level
    previous_bars = getattr(tqdm_utils, "_active", True)
    tempfile.tempdir = scratch
    try:
        if not verbose:
            absl_logger.setLevel(logging.ERROR)
            tqdm_utils.display_progress_bar(False)
        with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tempfile.tempdir = previous_tempdir
        absl_logger.setLevel(previous_level)
        tqdm_utils.display_progress_bar(previous_bars)


def _build_offline(name: str, manual_dir, data_dir: str, verbose: bool = False) -> None:
    """The recipe of the shared data README: a private download and extract dir per build.

    TFDS names extracted files by file name only, so MNIST and Fashion-MNIST sharing an extract
    dir would silently reuse each other's data.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download import checksums

    cls = tfds.builder_cls(name)
    had_override = "url_infos" in cls.__dict__
    previous = cls.__dict__.get("url_infos")
    scratch = tempfile.mkdtemp(prefix=f"keras_kd_tfds_{name}_")
    try:
        if name == "cifar10" and manual_dir is not None:
            got = checksums.compute_url_info(os.path.join(manual_dir, _CIFAR10_TARBALL))
            if got.checksum != cls.url_infos[_CIFAR10_URL].checksum:
                cls.url_infos = {
                    _CIFAR10_URL: checksums.UrlInfo(
                        size=got.size, checksum=got.checksum, filename=_CIFAR10_TARBALL
                    )
                }
        config = tfds.download.DownloadConfig(
            manual_dir=os.fspath(manual_dir) if manual_dir is not None else None,
            extract_dir=os.path.join(scratch, "extracted"),
        )
        with _tfds_build_scope(scratch, verbose):
            tfds.builder(name, data_dir=data_dir).download_and_prepare(
                download_dir=scratch, download_config=config
            )
    finally:
        if had_override:
            cls.url_infos = previous
        elif "url_infos" in cls.__dict__:
            delattr(cls, "url_infos")
        shutil.rmtree(scratch, ignore_errors=True)


def _scale(image, label):
    return tf.cast(image, tf.float32) / 255.0, label


def load(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    batch_size: int | None = None,
    shuffle_buffer: int | None = None,
    seed: int | None = None,
    download: bool = False,
    verbose: bool = False,
) -> tf.data.Dataset:
    """Loads a split as `(image float32 in [0, 1], label int64)` pairs, building it if needed.

    Args:
        name: `"mnist"`, `"fashion_mnist"` or `"cifar10"`.
        split: a TFDS split: `"train"`, `"test"`, or a slice such as `"train[:10%]"`.
        data_dir: TFDS data directory (default `$KERAS_KD_DATA_DIR` or `~/tensorflow_datasets`).
        manual_dir: directory of source files for the first build (see `prepare`).
        batch_size: if given, the dataset is batched (last batch kept) and prefetched.
        shuffle_buffer: if given, examples are shuffled with this buffer before batching.
        seed: seed of the example shuffle and of TFDS's file shuffle, for a reproducible order.
        download: allow TFDS to download the sources when no manual files are available.
        verbose: show TFDS's messages and progress bars if the dataset is built (see `prepare`).

    Returns:
        A `tf.data.Dataset`; images are `pixels / 255` (no standardisation), shape
        `(28, 28, 1)` for MNIST / Fashion-MNIST and `(32, 32, 3)` for CIFAR-10.

    Raises:
        FileNotFoundError: if the dataset must be built and the source files are missing.
        TypeError, ValueError: for an unknown `name`, or a `batch_size` or `shuffle_buffer`
            that is not a positive integer.

    Example:
        >>> train = keras_kd.datasets.load("mnist", "train", batch_size=128, shuffle_buffer=60000)
        >>> fashion = keras_kd.datasets.load("fashion_mnist", "test",
        ...                                  manual_dir="shared/data/fashion_mnist")
    """
    if batch_size is not None:
        batch_size = validation.positive_int("batch_size", batch_size, hint="Or pass None.")
    if shuffle_buffer is not None:
        shuffle_buffer = validation.positive_int(
            "shuffle_buffer", shuffle_buffer, hint="Or pass None for no shuffling."
        )
    import tensorflow_datasets as tfds

    builder = prepare(name, data_dir, manual_dir, download, verbose)
    shuffle = shuffle_buffer is not None
    ds = builder.as_dataset(
        split=split,
        as_supervised=True,
        shuffle_files=shuffle,
        read_config=tfds.ReadConfig(shuffle_seed=seed) if shuffle else None,
    )
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed)
    ds = ds.map(_scale, num_parallel_calls=tf.data.AUTOTUNE)
    if batch_size is not None:
        ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return ds


def load_arrays(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    normalize: bool = True,
    download: bool = False,
    verbose: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """`load` as NumPy arrays `(x, y)`, for jobs small enough to hold a split in memory.

    Args:
        name, split, data_dir, manual_dir, download, verbose: as in `load`.
        normalize: if True `x` is float32 `pixels / 255`; if False the raw uint8 pixels.

    Returns:
        `x` of shape `(n, H, W, C)` and `y` of shape `(n,)` int64, in the dataset's order.

    Example:
        >>> x_test, y_test = keras_kd.datasets.load_arrays("mnist", "test")   # (10000, 28, 28, 1)
    """
    import tensorflow_datasets as tfds

    builder = prepare(name, data_dir, manual_dir, download, verbose)
    x, y = tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True, batch_size=-1))
    if normalize:
        x = x.astype(np.float32) / np.float32(255.0)
    return x, y.astype(np.int64)


def _decode_cifar_npz(npz, split: str) -> np.ndarray:
    jpeg, offsets = npz[f"{split}_jpeg"], npz[f"{split}_offsets"]
    return np.stack(
        [
            tf.io.decode_jpeg(
                jpeg[offsets[i] : offsets[i + 1]].tobytes(),
                channels=3,
                dct_method="INTEGER_ACCURATE",
            ).numpy()
            for i in range(len(offsets) - 1)
        ]
    )


def _cifar_records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """`<1 label byte><1024 R><1024 G><1024 B>` per image, the official binary layout."""
    planes = np.transpose(images, (0, 3, 1, 2)).reshape(len(images), 3 * 32 * 32)
    return np.concatenate([labels.astype(np.uint8)[:, None], planes], axis=1).tobytes()


def prepare_cifar10_manual_dir(npz_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Writes `cifar-10-binary.tar.gz` in the official binary layout from the JPEG npz.

    The npz (see the shared data README) holds `train_jpeg`/`train_offsets`,
    `test_jpeg`/`test_offsets`, `y_train` and `y_test`. Images are decoded with TF's
    `INTEGER_ACCURATE` DCT and written as `cifar-10-batches-bin/data_batch_{1..5}.bin`,
    `test_batch.bin` and `batches.meta.txt`. The pixels keep the JPEG artifacts of the source.

    Args:
        npz_path: path of `cifar10_jpeg_yoongikim.npz`.
        out_dir: directory to create (if needed) and write the tarball into.

    Returns:
        `out_dir`, ready to pass as `manual_dir` to `load("cifar10", ...)`.

    Example:
        >>> d = prepare_cifar10_manual_dir("shared/data/cifar10_jpeg/cifar10_jpeg_yoongikim.npz",
        ...                                "/tmp/cifar_manual")
        >>> train = keras_kd.datasets.load("cifar10", "train", manual_dir=d)
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with np.load(npz_path) as npz:
        x_train, y_train = _decode_cifar_npz(npz, "train"), npz["y_train"]
        x_test, y_test = _decode_cifar_npz(npz, "test"), npz["y_test"]
    if x_train.shape[1:] != (32, 32, 3) or len(x_train) % 5:
        raise ValueError(
            f"npz_path must hold 32x32x3 images with a train size divisible by 5, got "
            f"{x_train.shape}."
        )
    files = {}
    per_batch = len(x_train) // 5
    for i in range(5):
        part = slice(i * per_batch, (i + 1) * per_batch)
        files[f"data_batch_{i + 1}.bin"] = _cifar_records(x_train[part], y_train[part])
    files["test_batch.bin"] = _cifar_records(x_test, y_test)
    files["batches.meta.txt"] = ("\n".join(_CIFAR10_CLASSES) + "\n").encode()
    tarball = out_dir / _CIFAR10_TARBALL
    partial = tarball.with_suffix(".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for fname, payload in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{fname}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    partial.replace(tarball)
    return out_dir
