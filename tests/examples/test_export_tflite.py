"""examples/export_tflite.py: every flag is checked before anything is loaded or converted.

Run as a user would, in a fresh process (the conversions themselves are tested in
tests/export/ and measured by benchmarks/deployment.py).
"""

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "export_tflite.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


def test_bad_flags_stop_the_script_with_one_line_each(tmp_path):
    out = tmp_path / "deploy"
    result = _run("--student=/nonexistent/student.keras", "--qat_epochs=0",
                  "--dataset=fashion_mnist", f"--data_dir={tmp_path / 'tfds'}",
                  f"--output_dir={out}")
    assert result.returncode == 1 and result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "FATAL Flags parsing error:",
        "  flag --student=/nonexistent/student.keras: student must be an existing file, got "
        "'/nonexistent/student.keras': no such file.",
        "  flag --qat_epochs=0: qat_epochs must be a positive integer, got 0.",
        f"  flags dataset=fashion_mnist, manual_dir=None, data_dir={tmp_path / 'tfds'}: "
        "--manual_dir is needed: fashion_mnist is not built in --data_dir yet; pass a directory "
        "holding t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz, "
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz.",
        "Pass --helpshort or --helpfull to see help on flags.",
    ]
    assert not out.exists() and not (tmp_path / "tfds").exists()


def test_student_is_required(tmp_path):
    result = _run(f"--output_dir={tmp_path / 'deploy'}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "flag --student=None: Flag --student must have a value other than None." in (
        result.stderr
    )
    assert not (tmp_path / "deploy").exists()
