"""Argument checks shared by the whole library: one wording, one rule per kind of value.

Every check returns the value converted to a plain Python type, or raises before anything is
built or changed, with a message of one form:

    f"{name} must be {expected}, got {value!r}." + (" " + hint if hint else "")

`TypeError` when the value is not of an accepted type (a `str`, `None`, a `bool`, a list where
a number is expected), `ValueError` when the type is right but the value is not (`nan`, `inf`,
out of range, a wrong count, an unknown choice). `hint` says what to do instead.

Accepted as real numbers: Python `int` / `float`, NumPy scalars (`np.float32(4.0)`,
`np.int64(2)`), 0-d NumPy arrays and eager 0-d tensors or variables (`tf.constant(4.0)`,
`keras.Variable(4.0)`, read once, at the call). Refused: `bool` (also `np.bool_`), strings,
`None`, complex numbers, arrays or tensors with any axis, symbolic tensors (no value yet).

Example:
    >>> positive("temperature", np.float32(4.0))
    4.0
    >>> positive("temperature", float("inf"))
    ValueError: temperature must be a finite real number > 0, got inf.
"""

from __future__ import annotations

import math
import numbers
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

_MAX_REPR = 200


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


def _error(kind: type[Exception], name: str, expected: str, value, hint: str) -> Exception:
    message = f"{name} must be {expected}, got {_show(value)}."
    return kind(f"{message} {hint}" if hint else message)


def _as_array(value) -> np.ndarray | None:
    """The value as a NumPy array if it is a number, an array or a concrete tensor, else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Real):
        return np.asarray(value)
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, keras.Variable):
        value = value.value  # the backend variable holding the current value
    if isinstance(value, tf.Tensor) and hasattr(value, "numpy"):  # eager, not symbolic
        return np.asarray(value.numpy())
    if isinstance(value, tf.Variable) and tf.executing_eagerly():  # no value inside a graph
        return np.asarray(value.numpy())
    return None


def _real(value) -> float | None:
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return float(value)  # exact for Python ints beyond int64 too (up to float's range)
    array = _as_array(value)
    if array is None or array.ndim != 0 or array.dtype.kind not in "iuf":
        return None
    return float(array)


def _integer(value) -> int | None:
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    array = _as_array(value)
    if array is None or array.ndim != 0 or array.dtype.kind not in "iu":
        return None
    return int(array)


def _checked_real(name: str, value, expected: str, hint: str, accept) -> float:
    number = _real(value)
    if number is None:
        raise _error(TypeError, name, expected, value, hint)
    if not (math.isfinite(number) and accept(number)):
        raise _error(ValueError, name, expected, value, hint)
    return number


def real_scalar(name: str, value, *, hint: str = "") -> float:
    """A finite real number as a `float`.

    Raises:
        TypeError: for anything but an int, float, NumPy real scalar, 0-d array or 0-d
            tensor/variable (`bool`, `str` and `None` included).
        ValueError: for `nan` and `±inf`.
    """
    return _checked_real(name, value, "a finite real number", hint, lambda x: True)


def positive(name: str, value, *, hint: str = "") -> float:
    """A finite real number `> 0` as a `float` (errors as `real_scalar`)."""
    return _checked_real(name, value, "a finite real number > 0", hint, lambda x: x > 0)


def non_negative(name: str, value, *, hint: str = "") -> float:
    """A finite real number `>= 0` as a `float` (errors as `real_scalar`)."""
    return _checked_real(name, value, "a non-negative finite real number", hint, lambda x: x >= 0)


def unit_interval(name: str, value, *, hint: str = "") -> float:
    """A real number in `[0, 1]` as a `float` (errors as `real_scalar`)."""
    return _checked_real(name, value, "a real number in [0, 1]", hint, lambda x: 0 <= x <= 1)


def _checked_int(name: str, value, expected: str, hint: str, minimum: int) -> int:
    number = _integer(value)
    if number is None:
        raise _error(TypeError, name, expected, value, hint)
    if number < minimum:
        raise _error(ValueError, name, expected, value, hint)
    return number


def positive_int(name: str, value, *, hint: str = "") -> int:
    """An integer `>= 1` as an `int`.

    Accepts Python and NumPy integers and 0-d integer arrays / tensors.

    Raises:
        TypeError: for `bool`, floats (also `2.0`), strings, `None` and anything else.
        ValueError: for an integer `< 1`.
    """
    return _checked_int(name, value, "a positive integer", hint, 1)


def non_negative_int(name: str, value, *, hint: str = "") -> int:
    """An integer `>= 0` as an `int` (errors as `positive_int`)."""
    return _checked_int(name, value, "a non-negative integer", hint, 0)


def _as_list(values) -> list | None:
    if isinstance(values, (str, bytes)):
        return None
    if isinstance(values, (np.ndarray, tf.Tensor, tf.Variable, keras.Variable)):
        array = _as_array(values)
        return list(array) if array is not None and array.ndim == 1 else None
    if isinstance(values, Sequence):
        return list(values)
    return None


def weights(name: str, values, count: int | None = None, *, hint: str = "") -> list[float]:
    """One non-negative finite real number per path, as a list of `float`.

    Args:
        name: the argument's name; an entry is named `name[i]` (`distillation_loss_weights[1]`).
        values: a list, tuple, 1-D array or 1-D tensor of real numbers.
        count: how many entries are needed (`None`: any number but zero).
        hint: what to do, appended to every message.

    Raises:
        TypeError: when `values` is not a sequence (a number, a string, a set, a generator) or
            an entry is not a real number.
        ValueError: for the wrong number of entries, or an entry that is negative, `nan` or
            `inf`.
    """
    many = "non-negative finite real numbers"
    if count is None:
        expected, wrong_count = f"a non-empty sequence of {many}", lambda n: n == 0
    else:
        expected, wrong_count = f"a sequence of {count} {many}", lambda n: n != count
    items = _as_list(values)
    if items is None:
        raise _error(TypeError, name, expected, values, hint)
    if wrong_count(len(items)):
        raise _error(ValueError, name, expected, values, hint)
    return [non_negative(f"{name}[{i}]", item, hint=hint) for i, item in enumerate(items)]


def one_of(name: str, value, choices: Iterable, *, hint: str = ""):
    """`value` if it equals one of `choices` (compared within the same type), else raises.

    Raises:
        TypeError: when `value` has the type of none of the choices (`combine=3`).
        ValueError: when it has a choice's type but equals none of them (`combine="median"`).
    """
    choices = tuple(choices)
    expected = f"one of {choices!r}"
    same_type = [c for c in choices if isinstance(value, type(c))]
    if not same_type:
        raise _error(TypeError, name, expected, value, hint)
    if not any(value is c or value == c for c in same_type):
        raise _error(ValueError, name, expected, value, hint)
    return value


__all__ = [
    "non_negative",
    "non_negative_int",
    "one_of",
    "positive",
    "positive_int",
    "real_scalar",
    "unit_interval",
    "weights",
]


def writable_dir(name: str, path: str | os.PathLike) -> Path:
    """Creates directory `path` if needed and checks that a file can be written in it.

    Raises:
        TypeError: if `path` is not a string or path-like.
        ValueError: if the directory cannot be created or written to (the message says why).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a directory path, got {path!r}.")
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise ValueError(
            f"{name} must be a directory where files can be written, got {os.fspath(path)!r}. "
            f"{error.strerror or error}."
        ) from error
    return out
