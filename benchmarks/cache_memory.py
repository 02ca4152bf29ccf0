"""Teacher caches: peak memory of the in-memory and streamed caches, and what top-k costs.

Part 1, memory (`--part=memory`). For each size in `--sizes` and each cache, a fresh process
builds a teacher (an MLP, 28x28x1 -> 256 -> 10), caches its logits over N generated 28x28x1
float32 images (a `tf.data` pipeline that computes each batch from its index, so the input
itself takes no memory), then reads the cached dataset once. The process reports its resident
memory before caching and its peak while caching and reading (Linux `VmHWM`, reset with
`/proc/self/clear_refs` after the baseline), plus wall times and the bytes written to disk. The
parent kills a child whose resident memory exceeds `--limit_gib` and reports it as such.

  - in_memory: `keras_kd.cache_teacher_logits(teacher, images)` (inputs + logits in memory).
  - streamed: `keras_kd.teachers.stream_teacher_outputs(teacher, images, directory)` (logits
    on disk in TFRecord shards, read back zipped with the same pipeline, fingerprints checked).

Part 2, top-k (`--part=top_k`). Bytes per example of a full-logit cache (`4 * classes`) and of
a top-k cache (`8k + 4`: k float32 logits, k int32 ids, one float32 rest mass), also as written
by the streamed cache (TFRecord framing and the 8-byte input fingerprint included), and the
error of `top_k_soft_target_kl` against the full `soft_target_kl` on synthetic logits for
1,000 and 32,000 classes: a "zipf" teacher (`t = -2 log(rank) + 0.1 g`, i.e. probabilities
about `rank^-2` at T = 1, in a random class order per example: a confident teacher with a
power-law tail) and a "gaussian" one (`t = 2 g + 8 onehot(label)`: one boosted class over a
flat tail); the student is `s = 0.8 t + g'` (g, g' standard normal). Reported: the teacher's
mean rest mass at k = 20, the relative error of the batch-mean loss, and the cosine between the
two losses' gradients with respect to the student logits (what training follows).

Usage:
  python benchmarks/cache_memory.py                                # both parts, 60k and 600k
  python benchmarks/cache_memory.py --part=memory --sizes=60000    # quicker
  python benchmarks/cache_memory.py --part=top_k
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

_PART = flags.DEFINE_enum("part", "all", ["all", "memory", "top_k"], "What to measure.")
_SIZES = flags.DEFINE_list("sizes", ["60000", "600000"], "Numbers of 28x28x1 examples.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Batch size of the teacher pass.")
_LIMIT = flags.DEFINE_float("limit_gib", 14.0, "Kill a child whose resident memory exceeds it.")
_CHILD = flags.DEFINE_string("child", None, "Internal: run one measurement (mode:examples:dir).")

_MIB = 2**20


def _status(pid: str = "self") -> dict[str, int]:
    """Resident memory fields of /proc/<pid>/status, in bytes."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def _images(n: int, batch: int):
    import tensorflow as tf

    def make(ids):
        seed = tf.stack([ids[0], tf.constant(0, tf.int64)])
        images = tf.random.stateless_uniform((tf.size(ids), 28, 28, 1), seed=seed)
        return images, tf.cast(ids % 10, tf.int32)

    return tf.data.Dataset.range(n).batch(batch).map(make)


def _teacher():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Dense(256, activation="relu")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(10)(h), name="teacher")


def _child(spec: str) -> None:
    """One measurement in this fresh process; prints one JSON line."""
    import tensorflow as tf

    import keras_kd

    mode, n, directory = spec.split(":", 2)
    n = int(n)
    teacher = _teacher()
    images = _images(n, _BATCH.value)
    teacher.predict(next(iter(images))[0], verbose=0)  # warm up, so the baseline is fair
    baseline = _status()["VmRSS"]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    start = time.perf_counter()
    if mode == "in_memory":
        cached = keras_kd.cache_teacher_logits(teacher, images, batch_size=_BATCH.value)
    else:
        cached = keras_kd.teachers.stream_teacher_outputs(
            teacher, images, directory, batch_size=_BATCH.value)
    written = time.perf_counter()
    count, checksum = 0, 0.0
    for features, labels in cached:
        logits = features[keras_kd.teachers.cached.CACHE_OUTPUTS_KEY]["logits"]
        count += int(tf.shape(labels)[0])
        checksum += float(tf.reduce_sum(logits))
    read = time.perf_counter()
    disk = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))
    print(json.dumps({
        "mode": mode, "examples": n, "read_examples": count, "baseline": baseline,
        "peak": _status()["VmHWM"], "write_s": written - start, "read_s": read - written,
        "disk": disk, "checksum": checksum,
    }))


def _measure(mode: str, n: int) -> dict:
    directory = tempfile.mkdtemp(prefix=f"cache_memory_{mode}_")
    command = [sys.executable, os.path.abspath(__file__), f"--child={mode}:{n}:{directory}",
               f"--batch_size={_BATCH.value}"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    largest, killed = 0, False
    try:
        while child.poll() is None:
            try:
                largest = max(largest, _status(str(child.pid))["VmRSS"])
            except (FileNotFoundError, KeyError, ProcessLookupError):
                pass
            if largest > _LIMIT.value * 2**30:
                child.kill()
                killed = True
            time.sleep(0.2)
        out = child.stdout.read()
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        shutil.rmtree(directory, ignore_errors=True)
    if killed or child.returncode != 0:
        return {"mode": mode, "examples": n, "failed": True, "killed": killed,
                "largest": largest}
    return json.loads(out.strip().splitlines()[-1])


def _memory_table() -> list[str]:
    sizes = [int(s) for s in _SIZES.value]
    rows = []
    for n in sizes:
        for mode in ("streamed", "in_memory"):
            result = _measure(mode, n)
            print(f"  {json.dumps(result)}", flush=True)
            rows.append(result)
    lines = [
        "| cache | examples | input size (MiB) | RSS before (MiB) | peak RSS (MiB) | "
        "peak - before (MiB) | write s | read s | on disk (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        size = r["examples"] * 28 * 28 * 4 / _MIB
        if r.get("failed"):
            cause = (f"killed above {_LIMIT.value:g} GiB" if r["killed"] else "failed")
            lines.append(f"| {r['mode']} | {r['examples']:,} | {size:.0f} | | "
                         f"> {r['largest'] / _MIB:,.0f} ({cause}) | | | | |")
            continue
        assert r["read_examples"] == r["examples"], r
        disk = f"{r['disk'] / _MIB:.1f}" if r["mode"] == "streamed" else "—"
        lines.append(
            f"| {r['mode']} | {r['examples']:,} | {size:.0f} | {r['baseline'] / _MIB:,.0f} | "
            f"{r['peak'] / _MIB:,.0f} | **{(r['peak'] - r['baseline']) / _MIB:,.0f}** | "
            f"{r['write_s']:.1f} | {r['read_s']:.1f} | {disk} |")
    return lines


def _top_k_tables() -> list[str]:
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_kd
    from keras_kd.losses import LOGITS, TopKSoftTargetDistillation
    from keras_kd.losses.functional import (
        soft_target_kl,
        top_k_soft_target_kl,
        top_k_teacher_targets,
    )

    lines = ["| classes | cache | bytes/example (tensors) | bytes/example on disk "
             "(streamed) | vs full logits |", "|---:|---|---:|---:|---:|"]
    n = 1024
    x = np.random.default_rng(0).random((n, 28, 28, 1), np.float32)
    for classes in (1000, 32000):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((28, 28, 1))
        teacher = keras.Model(inputs, keras.layers.Dense(classes)(keras.layers.Flatten()(inputs)))
        full = None
        for k in (None, 10, 20, 100):
            taps = (LOGITS,) if k is None else TopKSoftTargetDistillation(top_k=k).teacher_taps()
            directory = tempfile.mkdtemp(prefix="cache_top_k_")
            try:
                keras_kd.teachers.stream_teacher_outputs(teacher, x, directory, taps=taps,
                                                         batch_size=256)
                disk = sum(os.path.getsize(os.path.join(directory, f))
                           for f in os.listdir(directory) if f.endswith(".tfrecord"))
            finally:
                shutil.rmtree(directory, ignore_errors=True)
            tensors = 4 * classes if k is None else 8 * k + 4
            full = full or tensors
            name = "full logits" if k is None else f"top-{k}"
            lines.append(f"| {classes:,} | {name} | {tensors:,} | {disk / n:,.0f} | "
                         f"{full / tensors:,.0f}x smaller |")
    ks = (1, 10, 20, 100)
    lines += ["", "| teacher logits | classes | T | rest mass at k = 20 | "
              + " | ".join(f"k = {k}: loss error / grad. cosine" for k in ks) + " |",
              "|---|---:|---:|---:|" + "---:|" * len(ks)]
    rng = np.random.default_rng(1)
    for kind in ("zipf", "gaussian"):
        for classes in (1000, 32000):
            rows = 256 if classes == 1000 else 64
            if kind == "zipf":  # p_r ~ r^-2 at T = 1, classes in a random order per example
                ranks = np.argsort(rng.random((rows, classes)), axis=-1) + 1.0
                t = -2.0 * np.log(ranks) + 0.1 * rng.normal(size=(rows, classes))
            else:  # one boosted class over a Gaussian tail
                labels = rng.integers(0, classes, rows)
                t = 2.0 * rng.normal(size=(rows, classes)) + 8.0 * np.eye(classes)[labels]
            t = t.astype("float32")
            s = tf.constant((0.8 * t + rng.normal(size=t.shape)).astype("float32"))
            for temperature in (1.0, 4.0):
                with tf.GradientTape() as tape:
                    tape.watch(s)
                    full = tf.reduce_mean(soft_target_kl(t, s, temperature))
                g_full = tape.gradient(full, s).numpy().ravel()
                cells, rest_20 = [], None
                for k in ks:
                    values, indices, rest = top_k_teacher_targets(t, k, temperature)
                    with tf.GradientTape() as tape:
                        tape.watch(s)
                        approx = tf.reduce_mean(
                            top_k_soft_target_kl(values, indices, rest, s, temperature))
                    g = tape.gradient(approx, s).numpy().ravel()
                    error = abs(float(approx) - float(full)) / float(full)
                    cosine = float(g @ g_full / (np.linalg.norm(g) * np.linalg.norm(g_full)))
                    cells.append(f"{100 * error:.1f} % / {cosine:.3f}")
                    rest_20 = float(tf.reduce_mean(rest)) if k == 20 else rest_20
                lines.append(f"| {kind} | {classes:,} | {temperature:g} | {rest_20:.3f} | "
                             + " | ".join(cells) + " |")
    return lines


def main(argv):
    del argv
    if _CHILD.value:
        _child(_CHILD.value)
        return
    import keras
    import tensorflow as tf

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    command = " ".join(["python benchmarks/cache_memory.py", *sys.argv[1:]])
    out = [f"Command: `{command}` — {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
           f"TF {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs, load "
           f"{load} at start.", ""]
    if _PART.value in ("all", "memory"):
        out += _memory_table() + [""]
    if _PART.value in ("all", "top_k"):
        out += _top_k_tables()
    print("\n" + "\n".join(out))


if __name__ == "__main__":
    app.run(main)
