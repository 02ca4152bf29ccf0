"""Two worker processes on localhost distil with `MultiWorkerMirroredStrategy` inside `fit`.

The test writes the initial weights and the data to a temporary directory, starts this file twice
as a worker (`python tests/test_multi_worker.py WORKER_INDEX PORT0 PORT1 DIR`, with `TF_CONFIG`
naming two workers on free localhost ports), and trains the same models in this process on the
same global batches without any strategy. Both workers must end with the same weights, equal to
the single-process ones, and log the same losses. Each worker is killed if it is still running
after `_TIMEOUT_S`, so a hung collective fails the test instead of blocking the suite.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

N_IN, N_CLASSES, GLOBAL_BATCH, STEPS, EPOCHS = 4, 3, 8, 3, 2
_TIMEOUT_S = 50
_LOGGED = ("loss", "student_loss", "distillation_loss", "val_loss")


def _mlp(keras, hidden, name):
    inputs = keras.Input((N_IN,))
    h = keras.layers.Dense(hidden, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(N_CLASSES)(h), name=name)


def _train(keras, tf, keras_kd, strategy, arrays):
    """Builds the models under `strategy`, loads `arrays`' weights, fits; returns the result."""
    with strategy.scope():
        teacher, student = _mlp(keras, 16, "teacher"), _mlp(keras, 6, "student")
        teacher.set_weights([arrays[f"teacher_{i}"] for i in range(len(teacher.weights))])
        student.set_weights([arrays[f"student_{i}"] for i in range(len(student.weights))])
        distiller = keras_kd.Distiller(
            teacher, student,
            [keras_kd.losses.SoftTargetDistillation(2.0),
             keras_kd.losses.LogitMatchingDistillation()],
            distillation_loss_weights=[0.7, 0.3], student_loss_weight=0.3,
        )
        distiller.compile(keras.optimizers.SGD(0.2),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = tf.data.Dataset.from_tensor_slices((arrays["x"], arrays["y"], arrays["w"]))
    dataset = dataset.batch(GLOBAL_BATCH).with_options(options)
    history = distiller.fit(dataset, validation_data=dataset, epochs=EPOCHS, verbose=0).history
    weights = [np.asarray(w) for w in student.get_weights()]
    return weights, {key: [float(v) for v in history[key]] for key in _LOGGED}


def _worker(argv) -> None:
    index, port0, port1, directory = int(argv[1]), argv[2], argv[3], Path(argv[4])
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"localhost:{port0}", f"localhost:{port1}"]},
        "task": {"type": "worker", "index": index},
    })
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)  # tiny models; fewer threads contend
    # The strategy must exist before TensorFlow runs any op (collectives are configured once).
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import keras

    import keras_kd

    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    arrays = dict(np.load(directory / "inputs.npz"))
    weights, history = _train(keras, tf, keras_kd, strategy, arrays)
    np.savez(directory / f"worker{index}.npz", *weights)
    (directory / f"worker{index}.json").write_text(json.dumps(history))


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _run_workers(directory: Path) -> None:
    ports = [str(p) for p in _free_ports(2)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env.pop("TF_CONFIG", None)
    logs = [open(directory / f"worker{i}.log", "w") for i in range(2)]  # noqa: SIM115
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, str(i), *ports, str(directory)],
            env=env, stdout=logs[i], stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + _TIMEOUT_S
    try:
        for worker in workers:
            worker.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        for log in logs:
            log.close()
    failed = [i for i, w in enumerate(workers) if w.returncode != 0]
    if failed:
        tails = "\n".join(
            f"--- worker {i} (exit {workers[i].returncode}) ---\n"
            + (directory / f"worker{i}.log").read_text()[-3000:]
            for i in failed
        )
        raise AssertionError(f"Worker(s) {failed} failed or exceeded {_TIMEOUT_S} s:\n{tails}")


def test_two_workers_fit_equals_single_process(tmp_path):
    import keras
    import tensorflow as tf

    import keras_kd

    rng = np.random.default_rng(0)
    n = GLOBAL_BATCH * STEPS
    arrays = {
        "x": rng.normal(size=(n, N_IN)).astype("float32") * 2.0,
        "y": rng.integers(0, N_CLASSES, size=(n,)).astype("int32"),
        "w": rng.uniform(0.0, 3.0, size=(n,)).astype("float32"),
    }
    initial = {}
    for role, hidden in (("teacher", 16), ("student", 6)):
        for i, w in enumerate(_mlp(keras, hidden, role).get_weights()):
            initial[f"{role}_{i}"] = np.asarray(w)
    np.savez(tmp_path / "inputs.npz", **arrays, **initial)

    _run_workers(tmp_path)
    single, single_history = _train(keras, tf, keras_kd, tf.distribute.get_strategy(),
                                    {**arrays, **initial})

    moved = max(np.abs(single[i] - initial[f"student_{i}"]).max() for i in range(len(single)))
    assert moved > 1e-2  # the steps changed the student
    results = []
    for i in range(2):
        with np.load(tmp_path / f"worker{i}.npz") as saved:
            weights = [saved[f"arr_{j}"] for j in range(len(single))]
        results.append((weights, json.loads((tmp_path / f"worker{i}.json").read_text())))
    for a, b in zip(results[0][0], results[1][0]):
        np.testing.assert_array_equal(a, b)  # the all-reduce gives both workers one update
    for weights, history in results:
        for got, want in zip(weights, single):
            np.testing.assert_allclose(got, want, atol=1e-5)
        for key in _LOGGED:
            np.testing.assert_allclose(history[key], single_history[key], atol=1e-5,
                                       err_msg=key)


if __name__ == "__main__":
    _worker(sys.argv)
