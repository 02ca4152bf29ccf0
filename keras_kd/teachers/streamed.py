"""Teacher outputs streamed to TFRecord shards on disk and read back beside the input pipeline.

`cache_teacher_outputs` holds the inputs and the outputs in memory. Here only the teacher's
outputs are stored, in TFRecord files of `batches_per_shard` batches each (one record per
batch: a `tf.train.Example` holding each output as a serialized tensor, plus a fingerprint of
the input batch), and they are read back zipped with the user's own `tf.data` pipeline, which
supplies the inputs, labels and weights again. Memory does not grow with the dataset: one
batch is in flight while writing, and a TFRecord reader plus the user's pipeline while reading.

Layout of `directory`: `manifest.json` (what was cached, from what, and the finished shards)
and `shard-00000.tfrecord`, `shard-00001.tfrecord`, ... A shard is written under a temporary
name and renamed when complete, and the manifest is rewritten (atomically) after each shard,
so an interrupted run loses at most the shard in progress: calling `stream_teacher_outputs`
again with the same teacher and data skips the finished batches and continues.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_kd import validation
from keras_kd.losses.base import LOGITS, Tap
from keras_kd.teachers.cached import (
    CACHE_INPUTS_KEY,
    CACHE_OUTPUTS_KEY,
    _arrays,
    _as_dataset,
    _split,
    batched_input,
    check_taps,
    check_teacher_arguments,
    teacher_pass,
)

FORMAT = "keras_kd.streamed_teacher_outputs.v1"
MANIFEST = "manifest.json"
# Feature of each record holding the farmhash64 of every input example (8 bytes per leaf).
FINGERPRINT_KEY = "keras_kd/input_fingerprint"
_MISMATCH = (
    "The inputs differ from those the teacher saw when the cache in {directory} was written: "
    "data must yield the same elements in the same order as then (no shuffle with "
    "reshuffle_each_iteration, no random augmentation before this point). Shuffle the dataset "
    "this function returns instead, e.g. .unbatch().shuffle(n).batch(b)."
)


def _path(directory: str, name: str) -> str:
    return os.path.join(directory, name)


def _signature(dataset: tf.data.Dataset) -> str:
    """The structure, shapes and dtypes of the dataset's elements, as a string."""
    spec = dataset.element_spec
    leaves = [[None if s.shape.rank is None else s.shape.as_list(), s.dtype.name]
              for s in tf.nest.flatten(spec)]
    return json.dumps([str(tf.nest.map_structure(lambda _: 0, spec)), leaves])


def _teacher_digest(teacher: keras.Model, teacher_input_fn) -> str:
    digest = hashlib.sha256()
    for weight in teacher.weights:
        digest.update(weight.path.encode())
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    name = getattr(teacher_input_fn, "__qualname__", repr(teacher_input_fn))
    digest.update(str(name if teacher_input_fn is not None else None).encode())
    return digest.hexdigest()


def input_fingerprint(x):
    """`(batch, 8 * leaves)` uint8: farmhash64 of each example of each dense input leaf."""
    leaves = [tf.fingerprint(leaf) for leaf in tf.nest.flatten(x) if isinstance(leaf, tf.Tensor)]
    if not leaves:
        raise ValueError(
            "The streamed cache matches outputs to inputs by fingerprints of the dense input "
            f"tensors, and these inputs have none ({x!r}). Use cache_teacher_outputs.")
    return tf.concat(leaves, axis=-1)


def _load_manifest(directory: str) -> dict | None:
    path = _path(directory, MANIFEST)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a keras_kd streamed teacher cache (format "
                         f"{manifest.get('format')!r}, expected {FORMAT!r}).")
    return manifest


def _save_manifest(directory: str, manifest: dict) -> None:
    path = _path(directory, MANIFEST)
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def _remove_cache_files(directory: str, temporary_only: bool) -> None:
    patterns = ["shard-*.tfrecord.tmp", MANIFEST + ".tmp"]
    if not temporary_only:
        patterns += ["shard-*.tfrecord", MANIFEST]
    for pattern in patterns:
        for path in tf.io.gfile.glob(_path(directory, pattern)):
            tf.io.gfile.remove(path)


def _example(outputs: dict, fingerprint) -> bytes:
    def feature(tensor):
        value = tf.io.serialize_tensor(tensor).numpy()
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    features = {key: feature(value) for key, value in outputs.items()}
    features[FINGERPRINT_KEY] = feature(fingerprint)
    return tf.train.Example(
        features=tf.train.Features(feature=features)).SerializeToString()


def _write(teacher, dataset, taps, teacher_input_fn, directory, manifest) -> None:
    """Writes the shards still missing, resuming after the last finished one."""
    _remove_cache_files(directory, temporary_only=True)
    per_shard = manifest["batches_per_shard"]
    start = sum(shard["batches"] for shard in manifest["shards"])
    writer, batches, examples, name = None, 0, 0, None

    def finish():
        writer.close()
        tf.io.gfile.rename(_path(directory, name + ".tmp"), _path(directory, name),
                           overwrite=True)
        manifest["shards"].append({"file": name, "batches": batches, "examples": examples})
        _save_manifest(directory, manifest)

    for element, outputs in teacher_pass(teacher, dataset.skip(start), taps, teacher_input_fn):
        x = _split(element)[0]
        if writer is None:
            name = f"shard-{len(manifest['shards']):05d}.tfrecord"
            writer = tf.io.TFRecordWriter(_path(directory, name + ".tmp"))
            batches = examples = 0
        if manifest["keys"] is None:
            manifest["keys"] = {key: {"dtype": v.dtype.name, "shape": v.shape.as_list()[1:]}
                                for key, v in outputs.items()}
        writer.write(_example(outputs, input_fingerprint(x)))
        batches += 1
        examples += int(tf.shape(tf.nest.flatten(x)[0])[0])
        if batches == per_shard:
            finish()
            writer = None
    if writer is not None:
        finish()
    if not manifest["shards"]:
        raise ValueError("stream_teacher_outputs got an empty dataset.")
    manifest["complete"] = True
    manifest["num_batches"] = sum(shard["batches"] for shard in manifest["shards"])
    manifest["num_examples"] = sum(shard["examples"] for shard in manifest["shards"])
    _save_manifest(directory, manifest)


def stream_teacher_outputs(
    teacher: keras.Model,
    data,
    directory,
    y=None,
    sample_weight=None,
    taps: Sequence[Tap] = (LOGITS,),
    batch_size: int = 256,
    teacher_input_fn=None,
    *,
    batches_per_shard: int = 100,
    overwrite: bool = False,
    verify_inputs: bool = True,
) -> tf.data.Dataset:
    """Runs `teacher` once over `data`, writing its outputs to `directory`; returns the
    dataset the `Distiller` trains on: `data` zipped with the stored outputs.

    The result has the elements of `cache_teacher_outputs`, `({CACHE_INPUTS_KEY: x,
    CACHE_OUTPUTS_KEY: {tap.key: t}}, y[, w])`, in the order of `data` and batched as `data`
    is (a batched dataset gives the same batches back), with bitwise the same teacher
    outputs, but its memory does not grow with the dataset: only the outputs are stored, on
    disk, and `data` is read again for the inputs (see the module docstring for the format).

    Resumable: if the call is interrupted, calling it again with the same teacher, data and
    arguments continues after the last finished shard; once the cache is complete the teacher
    is not run again. A directory holding a cache of another teacher (weights), other taps or
    data of other shapes is refused unless `overwrite=True`.

    `data` must yield the same elements in the same order every time it is iterated (no
    `reshuffle_each_iteration`, no random augmentation): the outputs are matched to it by
    position. With `verify_inputs` every element is checked against a 64-bit fingerprint of
    the input the teacher saw (8 bytes per example and input), and a mismatch stops the
    iteration with an error. Shuffle the returned dataset (batched: `.unbatch().shuffle(n)
    .batch(b)`) rather than `data`. Under `tf.distribute` the result is sharded by element
    (`AutoShardPolicy.DATA`), never by file, so the two zipped pipelines stay aligned.

    Args:
        teacher: the teacher model.
        data: a finite `tf.data.Dataset` of `x`, `(x, y)` or `(x, y, w)` (batched or not), or
            an array with `y` / `sample_weight`.
        directory: where the cache is written (created if needed; local or any filesystem
            `tf.io.gfile` reads, e.g. `gs://`).
        y: labels when `data` is an array.
        sample_weight: per-example weights when `data` is an array.
        taps: which teacher tensors to store (`distiller.teacher_taps`); top-k taps
            (`keras_kd.losses.TopKSoftTargetDistillation`) store `2k + 1` numbers per example.
        batch_size: batch size of the teacher pass for arrays and unbatched datasets.
        teacher_input_fn: the `Distiller`'s `teacher_input_fn`, applied before the teacher.
        batches_per_shard: batches per TFRecord file, the unit of resumption.
        overwrite: delete a cache already in `directory` that does not match, instead of
            refusing it.
        verify_inputs: check each element against the stored input fingerprints.

    Returns:
        A `tf.data.Dataset`, batched like `data`.

    Raises:
        TypeError: for a teacher that is not a `keras.Model`, taps that are not `Tap`s, or
            non-callable `teacher_input_fn`.
        ValueError: for an empty dataset, a non-positive `batches_per_shard`, or a directory
            holding a cache that does not match (without `overwrite`).

    Example:
        >>> train = keras_kd.teachers.stream_teacher_outputs(
        ...     teacher, images.batch(256), "/data/teacher_cache", taps=distiller.teacher_taps)
        >>> distiller.fit(train, epochs=5)
    """
    batch_size = check_teacher_arguments(teacher, batch_size, teacher_input_fn)
    taps = check_taps(taps)
    per_shard = validation.positive_int(
        "batches_per_shard", batches_per_shard, hint="Shards are the unit of resumption.")
    directory = os.fspath(directory)
    batched = batched_input(data, teacher)
    dataset = _as_dataset(data, y, sample_weight, batch_size, teacher)
    identity = {
        "taps": [tap.key for tap in taps],
        "teacher": _teacher_digest(teacher, teacher_input_fn),
        "input_signature": _signature(_pipeline(data, y, sample_weight)),
        "batched": batched,
        "batch_size": None if batched else batch_size,
    }
    tf.io.gfile.makedirs(directory)
    manifest = _load_manifest(directory)
    if manifest is not None and (manifest["identity"] != identity
                                 or manifest["batches_per_shard"] != per_shard):
        if not overwrite:
            changed = sorted(k for k in identity if manifest["identity"].get(k) != identity[k])
            if manifest["batches_per_shard"] != per_shard:
                changed.append("batches_per_shard")
            raise ValueError(
                f"{directory} holds a teacher cache made with another {', '.join(changed)}. "
                "Pass another directory, or overwrite=True to replace that cache."
            )
        manifest = None
    if manifest is None:
        _remove_cache_files(directory, temporary_only=False)
        manifest = {"format": FORMAT, "identity": identity, "batches_per_shard": per_shard,
                    "keys": None, "shards": [], "complete": False}
        _save_manifest(directory, manifest)
    if not manifest["complete"]:
        _write(teacher, dataset, taps, teacher_input_fn, directory, manifest)
    return read_teacher_outputs(data, directory, y, sample_weight, verify_inputs=verify_inputs)


def _pipeline(data, y, sample_weight) -> tf.data.Dataset:
    """The pipeline the outputs are zipped with: `data` itself, or the arrays' slices."""
    if isinstance(data, tf.data.Dataset):
        if y is not None or sample_weight is not None:
            raise ValueError(
                "Pass y / sample_weight only with array inputs, not a tf.data.Dataset.")
        return data
    return tf.data.Dataset.from_tensor_slices(_arrays(data, y, sample_weight))


def read_teacher_outputs(data, directory, y=None, sample_weight=None, *,
                         verify_inputs: bool = True) -> tf.data.Dataset:
    """`data` zipped with the teacher outputs `stream_teacher_outputs` wrote to `directory`.

    For reading a finished cache again without the teacher, e.g. on every worker of a
    multi-worker run after one process wrote it. Same result as `stream_teacher_outputs`.

    Args:
        data: the same data (and `y`, `sample_weight`) the cache was written from.
        directory: the cache directory.
        y: labels when `data` is an array.
        sample_weight: per-example weights when `data` is an array.
        verify_inputs: check each element against the stored input fingerprints.

    Returns:
        A `tf.data.Dataset` of `({CACHE_INPUTS_KEY: x, CACHE_OUTPUTS_KEY: {key: t}}, y[, w])`.

    Raises:
        ValueError: for a directory without a finished cache, or data whose element shapes,
            dtypes or number of elements differ from those the cache was written from.

    Example:
        >>> train = keras_kd.teachers.read_teacher_outputs(images.batch(256), "/data/cache")
    """
    directory = os.fspath(directory)
    manifest = _load_manifest(directory)
    if manifest is None or not manifest["complete"]:
        state = "no" if manifest is None else "an unfinished"
        raise ValueError(
            f"{directory} holds {state} teacher cache. Write it with keras_kd.teachers."
            "stream_teacher_outputs(teacher, data, directory, ...) (it resumes an unfinished "
            "one)."
        )
    pipeline = _pipeline(data, y, sample_weight)
    identity = manifest["identity"]
    if _signature(pipeline) != identity["input_signature"]:
        raise ValueError(
            f"data yields elements {pipeline.element_spec}, but the cache in {directory} was "
            f"written from elements of another structure, shape or dtype "
            f"({identity['input_signature']}). Pass the data the cache was written from."
        )
    batched = identity["batched"]
    count = manifest["num_batches"] if batched else manifest["num_examples"]
    known = int(pipeline.cardinality())
    if (known >= 0 and known != count) or known == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            f"data yields {known if known >= 0 else 'infinitely many'} "
            f"{'batches' if batched else 'elements'}, but the cache in {directory} holds "
            f"{count}. Pass the data the cache was written from (repeat the result, not data)."
        )
    pipeline = pipeline.apply(tf.data.experimental.assert_cardinality(count))

    keys = manifest["keys"]
    features = {key: tf.io.FixedLenFeature([], tf.string) for key in [*keys, FINGERPRINT_KEY]}

    def parse(record):
        parsed = tf.io.parse_single_example(record, features)
        outputs = {
            key: tf.ensure_shape(tf.io.parse_tensor(parsed[key], tf.as_dtype(info["dtype"])),
                                 [None, *info["shape"]])
            for key, info in keys.items()
        }
        return outputs, tf.io.parse_tensor(parsed[FINGERPRINT_KEY], tf.uint8)

    files = [_path(directory, shard["file"]) for shard in manifest["shards"]]
    records = tf.data.TFRecordDataset(files).map(parse)
    if not batched:
        records = records.unbatch()
    message = _MISMATCH.format(directory=directory)

    def combine(element, stored):
        x, tail = _split(element)
        outputs, fingerprint = stored
        rows = tf.nest.flatten(x)[0].shape[0] if batched else None
        if rows is not None:  # a static batch size (drop_remainder) is kept on the outputs
            outputs = {key: tf.ensure_shape(v, [rows, *v.shape[1:]]) for key, v in outputs.items()}
        if verify_inputs:
            seen = input_fingerprint(x if batched else tf.nest.map_structure(
                lambda t: tf.expand_dims(t, 0), x))
            seen = seen if batched else seen[0]
            checks = [tf.debugging.assert_equal(tf.shape(seen), tf.shape(fingerprint),
                                                message=message)]
            with tf.control_dependencies(checks):
                checks.append(tf.debugging.assert_equal(seen, fingerprint, message=message))
            with tf.control_dependencies(checks):
                outputs = {key: tf.identity(value) for key, value in outputs.items()}
        return ({CACHE_INPUTS_KEY: x, CACHE_OUTPUTS_KEY: outputs}, *tail)

    zipped = tf.data.Dataset.zip((pipeline, records)).map(
        combine, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return zipped.with_options(options).prefetch(tf.data.AUTOTUNE)
