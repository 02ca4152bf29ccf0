"""What the example scripts share: quiet logs, and flag checks that run before any work.

Quiet logs: what a user needs by default, everything with --verbosity. By default the scripts
hide TensorFlow's C++ start-up banner and log lines (including the CUDA initialisation error on
a machine without a GPU), absl INFO lines, TensorFlow's Python INFO and WARNING messages, and
TFDS's progress bars; Keras's own progress output and the scripts' own headings stay. absl's
`--verbosity=0` (or `-v 0`; 1 for debug) shows all of it again. A `TF_CPP_MIN_LOG_LEVEL` set
in the environment is left as it is.

TensorFlow reads `TF_CPP_MIN_LOG_LEVEL` once, as it loads, and prints its banner while loading,
before that setting applies. So `before_tensorflow()` runs before anything imports TensorFlow:
it reads `--verbosity` from the command line itself (absl parses flags only later) and loads
TensorFlow with stderr held in a temporary file, which is written out if the import fails.
`after_flags()` applies the rest once absl has parsed the flags.

Flag checks: `check_flag` registers a `keras_kd.validation`-style check as an absl validator, so
a bad value ends the script with a one-line error naming the flag before anything is loaded,
trained or written (absl runs every validator when it parses the command line).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path


def requested_verbosity(argv: list[str]) -> int | None:
    """The value given to absl's `--verbosity` / `-v` on the command line, or None if absent."""
    names = ("--verbosity", "-verbosity", "-v", "--v")
    args = argv[1:]
    for i, arg in enumerate(args):
        if arg == "--":
            break
        name, has_value, value = arg.partition("=")
        if name not in names:
            continue
        if not has_value:
            value = args[i + 1] if i + 1 < len(args) else ""
        try:
            return int(value)
        except ValueError:
            return 0  # absl reports the bad value; show everything meanwhile
    return None


def before_tensorflow(argv: list[str] | None = None) -> bool:
    """Loads TensorFlow quietly unless `--verbosity` >= 0 was given; returns whether quiet."""
    level = requested_verbosity(sys.argv if argv is None else argv)
    quiet = level is None or level < 0
    if not quiet or "tensorflow" in sys.modules or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return quiet
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # C++ INFO, WARNING and ERROR lines
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow  # noqa: F401  (loaded here so its banner goes to `held`)
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    return quiet


# Lines that LiteRT and the TFLite converter print straight to file descriptor 2 from C++, past
# every log setting: one when the first interpreter starts, one per full-integer conversion.
LITERT_NOISE = ("INFO: Created TensorFlow Lite XNNPACK delegate", "fully_quantize: ")


@contextlib.contextmanager
def without_stderr_lines(prefixes: tuple[str, ...]):
    """Holds back the stderr lines that start with `prefixes`; every other stderr line is
    written out when the block ends (also when it raises), so nothing else is lost."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not line.startswith(prefixes)))
            sys.stderr.flush()


def after_flags() -> bool:
    """Once flags are parsed: absl WARNING and TF Python ERROR levels, no TFDS progress bars,
    unless `--verbosity` >= 0 was given. Returns whether the run is verbose."""
    from absl import flags, logging

    verbosity = flags.FLAGS["verbosity"]
    if verbosity.present and verbosity.value >= 0:
        return True
    import tensorflow as tf
    import tensorflow_datasets as tfds

    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("ERROR")
    tfds.disable_progress_bar()
    return False


def check_flag(flag: str, check, **kwargs) -> None:
    """Registers `check(flag, value, **kwargs)` as the validator of `--flag` (skipped for None).

    `check` raises `TypeError` / `ValueError` with a message naming the flag (as every
    `keras_kd.validation` function does); absl prints it as one line and exits.
    """
    from absl import flags

    def validator(value) -> bool:
        if value is not None:
            try:
                check(flag, value, **kwargs)
            except (TypeError, ValueError) as error:
                raise flags.ValidationError(str(error)) from None
        return True

    flags.register_validator(flag, validator)


def existing_file(name: str, value: str) -> None:
    if not Path(value).is_file():
        raise ValueError(f"{name} must be an existing file, got {value!r}: no such file.")


def existing_dir(name: str, value: str) -> None:
    if not Path(value).is_dir():
        raise ValueError(f"{name} must be an existing directory, got {value!r}.")


def positive_ints(name: str, values: list[str]) -> None:
    if not values or not all(v.isdigit() and int(v) >= 1 for v in values):
        raise ValueError(
            f"{name} must be a comma-separated list of positive integers, got {values!r}."
        )


def writable_dir(name: str, value: str) -> None:
    """Whether files can be written in directory `value`, tried for real (creating it if
    needed), leaving nothing behind: the folders made for the trial are removed again, so
    that a run stopped by another bad flag leaves no empty folder; the script creates them
    when it writes."""
    from keras_kd.validation import writable_dir as make_writable_dir

    path = Path(value).absolute()
    missing = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    try:
        make_writable_dir(name, path)
    finally:
        for folder in missing:
            with contextlib.suppress(OSError):  # not empty or already gone: leave it
                folder.rmdir()
