"""examples/distill_char_lm.py: a tiny end-to-end run on the real corpus (finite bpc, TFLite
parity), and padded positions counting zero in the bpc and in the Distiller's losses.

Everything runs in fresh processes: the example defines absl flags (`--temperature`,
`--epochs`, ...) that examples/distill_mnist.py defines too, and both cannot be imported into
one test process. The padding checks are `padding_checks` below, run by executing this file.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE = EXAMPLES / "distill_char_lm.py"
TINY = ["--seq_len=32", "--train_windows=192", "--test_windows=48", "--embedding_dim=8",
        "--teacher_units=32", "--student_units=8", "--teacher_epochs=1", "--epochs=1",
        "--batch_size=64"]


def _run(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """A fresh Python process as a user would start it (no TF log setting from conftest)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)


def test_tiny_run_reports_finite_bpc_and_tflite_parity(tmp_path):
    out = tmp_path / "out"
    result = _run(str(EXAMPLE), *TINY, f"--output_dir={out}")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # quiet: no TF banner, absl lines or LiteRT delegate line
    for name in ("teacher.keras", "student.keras", "student_scratch.keras",
                 "student_float32.tflite", "report.md", "results.json"):
        assert (out / name).stat().st_size > 0, name
        assert str(out / name) in result.stdout, name
    for heading in ("[1/3] Teacher", "[2/3] Student from scratch", "[3/3] Distilled student",
                    "Summary", "| student (distilled) |", "Written:"):
        assert heading in result.stdout, heading

    results = json.loads((out / "results.json").read_text())
    bpc = results["bpc"]
    assert sorted(bpc) == ["student (distilled)", "student (scratch)", "teacher"]
    # Finite, and below log2(98) + a margin: one epoch moved every model off its random start.
    assert all(math.isfinite(v) and 0 < v < 8 for v in bpc.values()), bpc
    parity = results["parity"]
    assert parity["windows"] == 48 and parity["positions"] > 48
    assert parity["max_abs_logit_diff"] <= 1e-4
    assert parity["argmax_agreement"] == 1.0
    assert abs(parity["tflite_bpc"] - bpc["student (distilled)"]) <= 1e-4
    assert results["params"]["student (scratch)"] == results["params"]["student (distilled)"]
    assert "| model | params | GRU | test bpc | train s |" in (out / "report.md").read_text()


def test_padded_positions_count_zero():
    result = _run(__file__, timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "padding checks passed"


def test_bad_flags_stop_the_script_with_one_line_each(tmp_path):
    out = tmp_path / "out"
    result = _run(str(EXAMPLE), "--seq_len=1", "--test_fraction=1", "--temperature=0",
                  f"--output_dir={out}")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "FATAL Flags parsing error:",
        "  flag --seq_len=1: seq_len must be an integer >= 2, got 1.",
        "  flag --test_fraction=1.0: test_fraction must be a real number strictly between 0 "
        "and 1, got 1.0.",
        "  flag --temperature=0.0: temperature must be a finite real number > 0, got 0.0. It "
        "is the softening temperature T.",
        "Pass --helpshort or --helpfull to see help on flags.",
    ]
    assert not out.exists()


# ----------------------------------------------------------------------- run in a child process
def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def padding_checks(example) -> None:
    """Data, bpc and Distiller losses: NumPy references, and padded positions changed at will
    (other inputs, other targets, other logits there) leave every value unchanged."""
    import keras

    import keras_kd

    rng = np.random.default_rng(0)
    # The data: windows of at most seq_len characters, next-character targets, a 0/1 mask.
    train_texts, test_texts = example.topic_texts(0.1)
    assert len(test_texts) == round(0.1 * (len(train_texts) + len(test_texts)))
    texts = example.windows(test_texts, 32)
    assert all(0 < len(t) <= 32 for t in texts) and len({len(t) for t in texts}) > 10
    x, y, mask = example.encode(texts, 32)
    lengths = mask.sum(1).astype(int)
    assert list(lengths) == [len(t) for t in texts]
    assert (x[:, 0] == example.BOS_ID).all()
    for i in range(len(texts)):
        n = lengths[i]
        assert (x[i, 1:n] == y[i, : n - 1]).all() and (y[i, n:] == example.PAD_ID).all()
    assert (y[mask > 0] >= 2).all() and (y.max() < example.VOCABULARY_SIZE)
    assert example.encode(["a\u201cb"], 4)[1][0, 1] == example.OOV_ID  # curly quote -> OOV

    # bits per character: sum(m * ce) / sum(m) / ln 2, whatever lies in the padding.
    logits = rng.normal(size=(*x.shape, example.VOCABULARY_SIZE)).astype(np.float32) * 3
    ce = -np.take_along_axis(_np_log_softmax(logits.astype(np.float64)), y[..., None], -1)[..., 0]
    expected = (mask * ce).sum() / mask.sum() / math.log(2)
    bpc = example.bits_per_character(logits, y, mask)
    assert abs(bpc - expected) <= 1e-5 * expected, (bpc, expected)
    pad = mask == 0
    other_logits, other_y = logits.copy(), y.copy()
    other_logits[pad] = rng.normal(size=(pad.sum(), example.VOCABULARY_SIZE)) * 10
    other_y[pad] = rng.integers(0, example.VOCABULARY_SIZE, pad.sum())
    assert example.bits_per_character(other_logits, other_y, mask) == bpc

    # The Distiller's losses on one batch: sum(m * l) / (B * T), the same with scrambled padding.
    keras.utils.set_random_seed(0)
    teacher = example.char_gru("teacher", 16, 1, 8, 32)
    student = example.char_gru("student", 8, 1, 8, 32)
    for model, scale in ((teacher, 30.0), (student, 10.0)):  # peaked, unlike a random start
        dense = model.get_layer(f"{model.name}_logits")
        dense.kernel.assign(dense.kernel * scale)
    distiller = keras_kd.Distiller(teacher, student, keras_kd.SoftTargetDistillation(2.0),
                                   student_loss_weight=0.3)
    distiller.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    batch = slice(0, 16)
    x, y, mask = x[batch], y[batch], mask[batch]
    assert (mask == 0).any()
    logs = distiller.test_on_batch(x, y, sample_weight=mask, return_dict=True)
    t = np.asarray(teacher(x), np.float64) / 2.0
    s = np.asarray(student(x), np.float64)
    hard = -np.take_along_axis(_np_log_softmax(s), y[..., None], -1)[..., 0]
    lp, lq = _np_log_softmax(t), _np_log_softmax(s / 2.0)
    soft = 4.0 * (np.exp(lp) * (lp - lq)).sum(-1)
    np.testing.assert_allclose(logs["student_loss"], (mask * hard).mean(), rtol=1e-5)
    np.testing.assert_allclose(logs["distillation_loss"], (mask * soft).mean(), rtol=1e-5)
    pad = mask == 0
    x2, y2 = x.copy(), y.copy()
    x2[pad] = rng.integers(0, example.VOCABULARY_SIZE, pad.sum())
    y2[pad] = rng.integers(0, example.VOCABULARY_SIZE, pad.sum())
    logs2 = distiller.test_on_batch(x2, y2, sample_weight=mask, return_dict=True)
    for key in ("loss", "student_loss", "distillation_loss"):
        np.testing.assert_allclose(logs2[key], logs[key], rtol=1e-6, err_msg=key)
    print("padding checks passed")


def _load_example():
    sys.path.insert(0, str(EXAMPLES))  # the example imports examples/_cli.py
    spec = importlib.util.spec_from_file_location("distill_char_lm_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    padding_checks(_load_example())
