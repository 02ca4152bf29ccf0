"""Shared pieces of the data-free / unlabelled / specialist benchmarks (not a public API)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import keras
import numpy as np


class PeakMemory:
    """Peak resident memory of this process while the block runs (sampled every 20 ms).

    Attributes after the block: `peak_mb` (the highest RSS seen), `start_mb`, `seconds`.
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak_mb = self.start_mb = 0.0
        self.seconds = 0.0
        self._stop = threading.Event()

    @staticmethod
    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _watch(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.rss_mb())
            time.sleep(self.interval)

    def __enter__(self):
        self.start_mb = self.peak_mb = self.rss_mb()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._start
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.rss_mb())
        return False


class Results:
    """`{row: {seed: {...}}}` kept in a JSON file, so a stopped run resumes where it was."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, row: str, seed: int):
        return self.data.get(row, {}).get(str(seed))

    def put(self, row: str, seed: int, value: dict) -> None:
        self.data.setdefault(row, {})[str(seed)] = value
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        partial.replace(self.path)


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> float:
    """Top-1 accuracy of a logits model."""
    predictions = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(predictions, axis=-1) == y))


def train_classifier(model: keras.Model, x, y, epochs: int, seed: int, batch_size: int = 128,
                     learning_rate: float = 1e-3, sample_weight=None) -> keras.Model:
    """Adam on the labels (logits, sparse cross-entropy), seeded shuffles."""
    keras.utils.set_random_seed(seed)
    model.compile(keras.optimizers.Adam(learning_rate),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=True,
              sample_weight=sample_weight)
    return model


def mean_std(values) -> str:
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return "—"
    if values.size == 1:
        return f"{values[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"
