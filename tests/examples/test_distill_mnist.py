"""examples/distill_mnist.py end to end on a tiny budget: real MNIST built offline, all files,
what it prints, a quiet stderr, and flags checked before any work."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import flags, logging
from absl.testing import flagsaver

from keras_kd import report

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE = EXAMPLES / "distill_mnist.py"
TINY = ["--train_examples=300", "--test_examples=100", "--epochs=1", "--teacher_epochs=1",
        "--batch_size=64", "--student_units=8"]


@pytest.fixture(scope="module")
def example():
    sys.path.insert(0, str(EXAMPLES))  # the examples import their shared examples/_cli.py
    spec = importlib.util.spec_from_file_location("distill_mnist_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines the flags once per session
    if not flags.FLAGS.is_parsed():
        flags.FLAGS(["distill_mnist"])
    # main() quiets absl, TensorFlow's Python logger and TFDS's progress bars process-wide, as a
    # script should; put them back for the other tests of this process.
    absl_level, tf_level = logging.get_verbosity(), tf.get_logger().level
    yield module
    logging.set_verbosity(absl_level)
    tf.get_logger().setLevel(tf_level)
    tfds.enable_progress_bar()
    sys.path.remove(str(EXAMPLES))


def run_script(script: Path, *args: str, tmpdir: Path | None = None, timeout: int = 300):
    """Runs an example as a user would: a fresh process, no TF log setting in the environment
    (the tests' conftest sets one)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=env,
        timeout=timeout, check=False,
    )


def test_main_writes_models_and_a_parsable_report(example, tmp_path, capsys):
    out = tmp_path / "out"
    with flagsaver.flagsaver(
        output_dir=str(out),
        data_dir=str(tmp_path / "tfds"),  # built from the shipped MNIST files, offline
        train_examples=600,
        test_examples=300,
        epochs=1,
        teacher_epochs=1,
        batch_size=64,
        student_units=["16"],
    ):
        example.main(["distill_mnist"])
    for name in (
        "teacher.keras",
        "student.keras",
        "student_scratch.keras",
        "report.md",
        "report.png",
    ):
        assert (out / name).stat().st_size > 0, name
    rows = report.read_table(out / "report.md")
    assert [r["model"] for r in rows] == ["teacher", "student (scratch)", "student (distilled)"]
    for row in rows:
        errors, accuracy = int(row["test errors"]), float(row["test accuracy"])
        assert 0 <= errors <= 300
        assert accuracy == pytest.approx(1 - errors / 300, abs=1e-4)
    student = keras.models.load_model(out / "student.keras")
    assert student.count_params() == int(rows[2]["params"].replace(",", ""))
    assert student.get_layer("dense_0").units == 16
    printed = capsys.readouterr().out
    for heading in ("Data: building MNIST", "[1/3] Teacher 'teacher'",
                    "[2/3] Student from scratch, seed 0", "[3/3] Distilled student, seed 0",
                    "Summary", "Only one seed was run", "Written:"):
        assert heading in printed, heading
    for name in ("report.md", "report.png", "teacher.keras", "student.keras"):
        assert str(out / name) in printed, name
    text = (out / "report.md").read_text()
    assert text.startswith("# MNIST (first 600 training / 300 test examples): scratch vs.")

    # A second run reuses the saved teacher through --teacher_path (no teacher training) and
    # repeats the students over two seeds.
    with flagsaver.flagsaver(
        output_dir=str(tmp_path / "again"),
        data_dir=str(tmp_path / "tfds"),
        teacher_path=str(out / "teacher.keras"),
        train_examples=300,
        test_examples=300,
        epochs=1,
        student_units=["8"],
        temperature=8.0,
        num_seeds=2,
    ):
        example.main(["distill_mnist"])
    again = report.read_table(tmp_path / "again" / "report.md")
    assert again[0]["test errors"] == rows[0]["test errors"]  # the same teacher
    text = (tmp_path / "again" / "report.md").read_text()
    assert "teacher_path" in text and "## Over 2 seeds" in text
    printed = capsys.readouterr().out
    assert "Data: MNIST, read from" in printed and "already trained" in printed
    assert "[5/5] Distilled student, seed 1 (2 of 2)" in printed


@pytest.mark.parametrize(
    "flag, value, match",
    [
        ("temperature", -1.0, "temperature must be a finite real number > 0, got -1.0"),
        ("student_loss_weight", 1.5, r"student_loss_weight must be a real number in \[0, 1\]"),
        ("epochs", 0, "epochs must be a positive integer, got 0"),
        ("num_seeds", 0, "num_seeds must be a positive integer, got 0"),
        ("seed", -1, "seed must be a non-negative integer, got -1"),
        ("student_units", ["8", "x"], "student_units must be a comma-separated list of positive"),
        ("teacher_path", "/nonexistent/teacher.keras", "teacher_path must be an existing file"),
        ("output_dir", "/proc/keras_kd_out", "output_dir must be a directory where files can be"),
    ],
)
def test_bad_flag_values_are_refused(example, flag, value, match):
    with pytest.raises(flags.IllegalFlagValueError, match=match):
        with flagsaver.flagsaver(**{flag: value}):
            pass
    assert not Path("/proc/keras_kd_out").exists()


def test_verbosity_is_read_from_the_command_line_before_flags_are_parsed(example):
    import _cli

    assert _cli.requested_verbosity(["x"]) is None
    assert _cli.requested_verbosity(["x", "--epochs=2", "--verbosity=1"]) == 1
    assert _cli.requested_verbosity(["x", "-v", "0"]) == 0
    assert _cli.requested_verbosity(["x", "--verbosity", "-1"]) == -1
    assert _cli.requested_verbosity(["x", "--", "-v", "1"]) is None


def test_teacher_epochs_zero_needs_a_teacher_path(example):
    with pytest.raises(flags.IllegalFlagValueError, match="--teacher_epochs must be at least 1"):
        with flagsaver.flagsaver(teacher_epochs=0):
            pass


def test_default_run_is_quiet_and_says_what_runs(tmp_path):
    """The user's view: nothing on stderr (no TF banner, CUDA error, absl lines or progress
    bars, no traceback), headings and the files on stdout, no temporary folder left."""
    temp = tmp_path / "temp"
    temp.mkdir()
    out = tmp_path / "out"
    result = run_script(EXAMPLE, *TINY, f"--data_dir={tmp_path / 'tfds'}", f"--output_dir={out}",
                        tmpdir=temp)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "[3/3] Distilled student" in result.stdout and str(out / "report.png") in result.stdout
    assert "Downloading" not in result.stdout
    assert sorted(p.name for p in temp.iterdir()) == []


def test_bad_flags_stop_the_script_at_once_with_one_line_each(tmp_path):
    out = tmp_path / "out"
    result = run_script(EXAMPLE, "--temperature=-1", "--epochs=0",
                        "--teacher_path=/nonexistent/teacher.keras", f"--output_dir={out}")
    assert result.returncode == 1 and result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "FATAL Flags parsing error:",
        "  flag --temperature=-1.0: temperature must be a finite real number > 0, got -1.0. It "
        "is the softening temperature T.",
        "  flag --epochs=0: epochs must be a positive integer, got 0.",
        "  flag --teacher_path=/nonexistent/teacher.keras: teacher_path must be an existing "
        "file, got '/nonexistent/teacher.keras': no such file.",
        "Pass --helpshort or --helpfull to see help on flags.",
    ]
    assert not out.exists()  # no empty output folder left behind
