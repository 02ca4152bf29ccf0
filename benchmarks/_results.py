"""Resumable per-(method, seed) results for the benchmark tables: one JSON line per finished run."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path


def run_missing(
    path: Path, pairs: Iterable[tuple[str, int]], run: Callable[[str, int], dict],
    log: Callable[[str], None] = print,
) -> dict:
    """Runs `run(method, seed)` for each pair not yet in `path`, appending each result.

    Returns every result (earlier and new) keyed by `(method, seed)`.
    """
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            done[(r["method"], r["seed"])] = r
    for method, seed in pairs:
        if (method, seed) in done:
            continue
        result = run(method, seed)
        done[(method, seed)] = result
        with path.open("a") as f:
            f.write(json.dumps(result) + "\n")
        log(json.dumps(result))
    return done
