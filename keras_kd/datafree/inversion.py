"""The input-optimisation loop every inversion method shares, and the synthetic set it makes.

An inversion method (metadata reconstruction, DeepInversion) says two things: how to start a
batch (initial inputs, target classes, the per-batch targets of its objective, drawn from one
seeded random generator) and its objective (a float32 scalar of the inputs and those targets).
`invert` does the rest, once for all of them:

- the synthetic set is made batch after batch; each batch's inputs are optimised from scratch
  for `steps` steps of Adam (the moments are reset for every batch, as the authors' code builds
  a fresh optimiser per batch);
- batch `b` draws everything random from `np.random.default_rng([seed, b])`: a run is
  reproducible and does not depend on where it was stopped and resumed;
- a Keras progress bar counts batches and shows the last step's loss terms;
- with `checkpoint_dir`, every finished batch is written to `batch_<b>.npz` next to a
  `run.json` fingerprint of the run; calling again with the same arguments loads them and
  continues, and a different run in that directory is refused;
- `time_limit` or Ctrl-C (`KeyboardInterrupt`) stops after the batch in progress is dropped;
  the batches made so far are returned (`complete=False`) and stay in `checkpoint_dir`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_kd import validation

_RUN_FILE = "run.json"


@dataclasses.dataclass
class SyntheticSet:
    """A transfer set made without training data.

    Attributes:
        x: `(n, *input_shape)` float32 inputs.
        y: `(n,)` int64 classes the inputs were made for (sampled targets, not labels of real
            data: the teacher's own prediction may differ).
        complete: `False` when the construction stopped early (time limit or interrupt).
        seconds: wall time spent building the batches of this call (loaded batches excluded).
    """

    x: np.ndarray
    y: np.ndarray
    complete: bool = True
    seconds: float = 0.0

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def dataset(self, batch_size: int = 128, shuffle: bool = True, seed: int | None = 0):
        """`(x,)` batches as a `tf.data.Dataset` (the `Distiller` reads the teacher's signal).

        Args:
            batch_size: batch size.
            shuffle: reshuffle every epoch (seeded by `seed`).
            seed: shuffle seed.

        Returns:
            A batched `tf.data.Dataset` of `(x,)` elements.
        """
        batch_size = validation.positive_int("batch_size", batch_size)
        ds = tf.data.Dataset.from_tensor_slices((self.x,))
        if shuffle:
            ds = ds.shuffle(len(self), seed=seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size)


@dataclasses.dataclass
class BatchStart:
    """How one batch starts: what `invert`'s `start_batch` returns.

    Attributes:
        x: `(batch, *input_shape)` initial inputs.
        y: `(batch,)` target classes.
        targets: float32 arrays the objective reads (sampled statistics, jitter offsets, ...),
            keyed by name; each has a fixed shape for every batch.
    """

    x: np.ndarray
    y: np.ndarray
    targets: Mapping[str, np.ndarray]


def balanced_classes(num_classes: int, batch_size: int, batch_index: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Classes `(b * batch + i) % num_classes` for the examples of batch `b`, shuffled.

    Every class gets the same share of the set (up to one example per batch), as the
    authors' codes do (one class per batch, or `[0, 1, ..., 9] * k`).
    """
    first = batch_index * batch_size
    classes = (np.arange(first, first + batch_size) % num_classes).astype(np.int64)
    return rng.permutation(classes)


class _Adam:
    """Adam on one variable, with moments that `reset` zeroes (a fresh optimiser per batch)."""

    def __init__(self, variable: tf.Variable, learning_rate: float,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8):
        self.variable = variable
        self.learning_rate = learning_rate
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.m = tf.Variable(tf.zeros_like(variable), trainable=False)
        self.v = tf.Variable(tf.zeros_like(variable), trainable=False)
        self.t = tf.Variable(0.0, trainable=False)

    def reset(self) -> None:
        self.m.assign(tf.zeros_like(self.m))
        self.v.assign(tf.zeros_like(self.v))
        self.t.assign(0.0)

    def apply(self, gradient) -> None:
        t = self.t.assign_add(1.0)
        m = self.m.assign(self.beta_1 * self.m + (1.0 - self.beta_1) * gradient)
        v = self.v.assign(self.beta_2 * self.v + (1.0 - self.beta_2) * tf.square(gradient))
        m_hat = m / (1.0 - tf.pow(self.beta_1, t))
        v_hat = v / (1.0 - tf.pow(self.beta_2, t))
        self.variable.assign_sub(self.learning_rate * m_hat / (tf.sqrt(v_hat) + self.epsilon))


def _jsonable(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


class _Checkpoint:
    """Finished batches of one run in a directory: `run.json` + `batch_<b>.npz`."""

    def __init__(self, directory, fingerprint: dict):
        self.directory = Path(directory)
        self.fingerprint = _jsonable(fingerprint)
        self.directory.mkdir(parents=True, exist_ok=True)
        run_file = self.directory / _RUN_FILE
        if run_file.exists():
            stored = json.loads(run_file.read_text())
            if stored != self.fingerprint:
                changed = sorted(k for k in set(stored) | set(self.fingerprint)
                                 if stored.get(k) != self.fingerprint.get(k))
                raise ValueError(
                    f"checkpoint_dir={os.fspath(directory)!r} holds batches of another run "
                    f"(it differs in {changed}). Pass a new checkpoint_dir, or the same "
                    "arguments to resume that run."
                )
        else:
            run_file.write_text(json.dumps(self.fingerprint, indent=1, sort_keys=True))

    def path(self, index: int) -> Path:
        return self.directory / f"batch_{index:06d}.npz"

    def load(self, index: int):
        path = self.path(index)
        if not path.exists():
            return None
        with np.load(path) as data:
            return data["x"], data["y"]

    def save(self, index: int, x: np.ndarray, y: np.ndarray) -> None:
        partial = self.directory / f".batch_{index:06d}.partial.npz"
        np.savez(partial, x=x, y=y)
        os.replace(partial, self.path(index))


def invert(
    objective: Callable,
    start_batch: Callable[[np.random.Generator, int], BatchStart],
    input_shape: Sequence[int],
    num_samples: int,
    batch_size: int,
    steps: int,
    learning_rate: float,
    *,
    seed: int = 0,
    input_range: tuple[float, float] | None = None,
    checkpoint_dir=None,
    fingerprint: dict | None = None,
    time_limit: float | None = None,
    verbose: int = 1,
    name: str = "inversion",
) -> SyntheticSet:
    """Optimises batches of inputs against `objective` and returns the synthetic set.

    Args:
        objective: `objective(x, targets) -> (loss, {term: value})`, traced once with
            `tf.function`; `x` is the `(batch, *input_shape)` float32 inputs being optimised,
            `targets` the dict of `BatchStart.targets` as tensors.
        start_batch: `start_batch(rng, batch_index) -> BatchStart`, drawing everything random
            from `rng`.
        input_shape: shape of one input.
        num_samples: size of the synthetic set (the last batch is cut to fit).
        batch_size: inputs optimised together.
        steps: Adam steps per batch.
        learning_rate: Adam's learning rate.
        seed: base seed; batch `b` uses `np.random.default_rng([seed, b])`.
        input_range: `(low, high)` to clip the inputs to after every step, or `None`.
        checkpoint_dir: directory that keeps finished batches, to resume from (see module doc).
        fingerprint: the run's arguments, stored with the checkpoint and compared on resume.
        time_limit: seconds after which no new batch is started (`None`: no limit); the
            first batch of the call always runs.
        verbose: 1 shows a Keras progress bar, 0 nothing.
        name: the method's name, shown in messages.

    Returns:
        A `SyntheticSet`; `complete=False` if stopped early.
    """
    input_shape = tuple(int(d) for d in input_shape)
    num_samples = validation.positive_int("num_samples", num_samples)
    batch_size = validation.positive_int("batch_size", batch_size)
    steps = validation.positive_int("steps", steps)
    learning_rate = validation.positive("learning_rate", learning_rate)
    seed = validation.non_negative_int("seed", seed)
    if time_limit is not None:
        time_limit = validation.positive("time_limit", time_limit,
                                         hint="Seconds, or None for no limit.")
    verbose = validation.one_of("verbose", verbose, (0, 1, 2))
    num_batches = -(-num_samples // batch_size)
    checkpoint = None
    if checkpoint_dir is not None:
        run = dict(fingerprint or {}, method=name, num_samples=num_samples,
                   batch_size=batch_size, steps=steps, learning_rate=learning_rate, seed=seed,
                   input_shape=list(input_shape),
                   input_range=list(input_range) if input_range else None)
        checkpoint = _Checkpoint(checkpoint_dir, run)

    x_var = tf.Variable(tf.zeros((batch_size, *input_shape), tf.float32), trainable=True)
    adam = _Adam(x_var, learning_rate)
    low, high = input_range if input_range is not None else (None, None)

    @tf.function
    def step(targets):
        with tf.GradientTape() as tape:
            loss, terms = objective(x_var.read_value(), targets)
        gradient = tape.gradient(loss, x_var)
        adam.apply(gradient)
        if low is not None:
            x_var.assign(tf.clip_by_value(x_var, low, high))
        return dict(terms, loss=loss)

    bar = keras.utils.Progbar(num_batches, verbose=verbose, unit_name="batch") if verbose else None
    xs, ys = [], []
    started = time.perf_counter()
    complete = True
    built = 0
    try:
        for b in range(num_batches):
            if checkpoint is not None:
                stored = checkpoint.load(b)
                if stored is not None:
                    xs.append(stored[0])
                    ys.append(stored[1])
                    if bar is not None:
                        bar.update(b + 1)
                    continue
            if (time_limit is not None and built > 0
                    and time.perf_counter() - started > time_limit):
                complete = False
                break
            start = start_batch(np.random.default_rng([seed, b]), b)
            x0 = np.asarray(start.x, np.float32)
            if x0.shape != (batch_size, *input_shape):
                raise ValueError(f"{name}: start_batch gave inputs of shape {x0.shape}, "
                                 f"expected {(batch_size, *input_shape)}.")
            x_var.assign(x0)
            adam.reset()
            targets = {k: tf.constant(v) for k, v in start.targets.items()}
            terms = {}
            for _ in range(steps):
                terms = step(targets)
            x_b = x_var.numpy()
            y_b = np.asarray(start.y, np.int64)
            if not np.all(np.isfinite(x_b)):
                raise FloatingPointError(
                    f"{name}: batch {b} diverged (non-finite inputs after {steps} steps). "
                    "Lower learning_rate, or the weights of the objective's terms."
                )
            if checkpoint is not None:
                checkpoint.save(b, x_b, y_b)
            xs.append(x_b)
            ys.append(y_b)
            built += 1
            if bar is not None:
                bar.update(b + 1, [(k, float(v)) for k, v in terms.items()])
    except KeyboardInterrupt:
        complete = False
        warnings.warn(
            f"{name} interrupted after {len(xs)} of {num_batches} batches; returning the "
            "synthetic set so far" + (f" (kept in {os.fspath(checkpoint_dir)})"
                                      if checkpoint_dir is not None else "") + ".",
            stacklevel=2,
        )
    seconds = time.perf_counter() - started
    if not xs:
        x = np.zeros((0, *input_shape), np.float32)
        y = np.zeros((0,), np.int64)
    else:
        x = np.concatenate(xs)[:num_samples]
        y = np.concatenate(ys)[:num_samples]
    if not complete and verbose:
        print(f"{name}: stopped early with {len(x)} of {num_samples} examples.")
    return SyntheticSet(x=x, y=y, complete=complete, seconds=seconds)


def gaussian_noise_set(input_shape: Sequence[int], num_samples: int, mean: float = 0.0,
                       std: float = 1.0, seed: int = 0) -> SyntheticSet:
    """A transfer set of Gaussian noise: the data-free lower bound.

    Args:
        input_shape: shape of one input.
        num_samples: number of inputs.
        mean: mean of every input value.
        std: standard deviation of every input value (> 0).
        seed: NumPy seed.

    Returns:
        A `SyntheticSet` with `y` all zeros (no class was targeted).

    Example:
        >>> noise = gaussian_noise_set((28, 28, 1), 10000, mean=0.13, std=0.31)

    Reference:
        Lopes et al. 2017 and Chen et al. 2019 (DAFL) report this baseline ("random noise",
        "normal distribution"). `x ~ N(mean, std^2)` per value.
    """
    num_samples = validation.positive_int("num_samples", num_samples)
    mean = validation.real_scalar("mean", mean)
    std = validation.positive("std", std)
    seed = validation.non_negative_int("seed", seed)
    rng = np.random.default_rng(seed)
    shape = (num_samples, *(int(d) for d in input_shape))
    x = rng.normal(mean, std, size=shape).astype(np.float32)
    return SyntheticSet(x=x, y=np.zeros((num_samples,), np.int64))
