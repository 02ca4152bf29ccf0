"""Timing helpers for the benchmark scripts: whole runs, repeated, interleaved, median.

Single steps are never timed: on a CPU throttled in ~100 ms slices only runs of several seconds
give stable numbers. Each measurement is a callable running one such run (e.g. one `fit` epoch).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping


def time_run(run: Callable[[], object]) -> tuple[float, float]:
    """Returns `(wall seconds, process CPU seconds)` of one call of `run`."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved_medians(
    runs: Mapping[str, Callable[[], object]], repeats: int, log: Callable[[str], None] = print
) -> dict[str, dict[str, float]]:
    """Times every run `repeats` times, alternating the order, and returns the medians.

    Round `r` goes through `runs` in order when `r` is even and in reverse when it is odd, so a
    slow drift of the machine (contention, thermal) weighs on all runs alike.

    Args:
        runs: name -> zero-argument callable doing one timed run (already warmed up).
        repeats: rounds; each run is timed once per round.
        log: where to report each timing as it is taken.

    Returns:
        name -> {"wall": median wall s, "cpu": median CPU s, "walls": [all wall s]}.
    """
    walls: dict[str, list[float]] = {name: [] for name in runs}
    cpus: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            wall, cpu = time_run(runs[name])
            walls[name].append(wall)
            cpus[name].append(cpu)
            log(f"  round {r + 1}/{repeats}  {name:<28s} wall {wall:7.3f} s  cpu {cpu:7.3f} s")
    return {
        name: {
            "wall": statistics.median(walls[name]),
            "cpu": statistics.median(cpus[name]),
            "walls": walls[name],
        }
        for name in names
    }
