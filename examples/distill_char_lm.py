r"""Distils a character-level GRU language model on real English text and ships it to TFLite.

Corpus: the English text of CPython's documentation topics, `pydoc_data.topics.topics` (what
`help("assert")` prints), a dict of topic name -> text that ships with every CPython, so nothing
is downloaded. Licence: the LICENSE.txt of the Python installation says "Python software and
documentation are licensed under the Python Software Foundation License Version 2" (examples and
code in the documentation are dual licensed under the PSF License Version 2 and the Zero-Clause
BSD licence). The text follows the Python version: CPython 3.11.7 has 79 topics, 465k characters.

Data, built the same way every time: the topics in sorted key order, the last --test_fraction
of them (8 of 79 topics, 38k characters) held out as test text. Each topic is split into
paragraphs at blank lines and each paragraph cut into windows of at most --seq_len characters,
so windows have different lengths. Vocabulary: newline and the 95 printable ASCII characters;
every other character (curly quotes, dashes) maps to one OOV id; id 0 pads and id 1 begins a
window. A window `w` gives the input `[BOS] + w[:-1]` and the target `w` (next-character ids),
both padded with 0 to --seq_len, and a `(windows, seq_len)` padding mask (1 on the window, 0
after it) passed as sample weights: padded positions count zero in the label loss, in the
per-position distillation loss and in the bits per character.

Models: Embedding -> GRU (return_sequences) -> Dense logits over the 98 ids. The GRU is causal,
so padding after a window cannot change the outputs on it and no Keras mask is needed. Runs: a
teacher (GRU 384), then one small student (GRU 64) trained twice from the same initial weights
on the same batches for the same epochs: once on the labels alone ("scratch"), once with
`keras_kd.Distiller` and `SoftTargetDistillation(T)` (teacher logits cached once). Reported:
bits per character (bpc = masked mean cross-entropy / ln 2) of the three on the held-out text,
then the distilled student exported to float32 TFLite with a batch size of 1 (`to_tflite(...,
batch_size=1)`: a GRU's loop converts to builtin ops only with a fixed batch) and run with LiteRT
on the held-out windows: max |logit difference| and argmax agreement with Keras on the real
(unpadded) positions, and the file's bpc.

Defaults: teacher GRU 384 (523k parameters, 10 epochs), student GRU 64 (28k parameters, 10
epochs), embedding 32, batch 64, Adam 3e-3 cosine-decayed, T = 1, alpha = 0.2. Measured (seed 0,
RESULTS.md): held-out bpc 1.732 teacher, 2.291 scratch, 2.253 distilled; over seeds 0-2 with
that teacher the distilled student is better by 0.042 +- 0.007 bpc on every seed. T = 1.5 or
2 made the student worse than scratch on seed 0; T = 1 with a little label weight did best.
LiteRT matches Keras to 4e-6 per logit. The full default run took 8 minutes on 2 cores shared
with other jobs. Keras's per-epoch `loss` is averaged over all positions with padded ones
counting 0 (as every Keras loss reduces a (B, T) sample weight), so it is about 0.71x the
per-character loss here (29 % padding).

Writes to --output_dir: teacher.keras (unless --teacher_path), student.keras (distilled),
student_scratch.keras, student_float32.tflite, report.md (the table and the parity numbers) and
results.json. Runs are reproducible with the same flags and --seed. Every flag is checked
before any work; TensorFlow's log lines are hidden (--verbosity=0 shows them).

Usage:
  python examples/distill_char_lm.py --output_dir=runs/char_lm
  python examples/distill_char_lm.py --teacher_path=runs/char_lm/teacher.keras --seed=1 \
      --output_dir=runs/char_lm_seed1
"""

import _cli  # examples/_cli.py

if __name__ == "__main__":
    _cli.before_tensorflow()  # before anything loads TensorFlow

import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd import export, validation  # noqa: E402

_SEQ_LEN = flags.DEFINE_integer("seq_len", 128, "Longest window, in characters (>= 2).")
_TEST_FRACTION = flags.DEFINE_float(
    "test_fraction", 0.1, "Share of the topics (the last ones, by name) held out as test text."
)
_EMBEDDING_DIM = flags.DEFINE_integer("embedding_dim", 32, "Character embedding size (both).")
_TEACHER_UNITS = flags.DEFINE_integer("teacher_units", 384, "GRU units of each teacher layer.")
_TEACHER_LAYERS = flags.DEFINE_integer("teacher_layers", 1, "Stacked GRU layers of the teacher.")
_TEACHER_EPOCHS = flags.DEFINE_integer(
    "teacher_epochs", 10, "Epochs of teacher training (>= 1; ignored with --teacher_path)."
)
_TEACHER_PATH = flags.DEFINE_string(
    "teacher_path", None, "A saved .keras teacher (logits) to use instead of training one."
)
_STUDENT_UNITS = flags.DEFINE_integer("student_units", 64, "GRU units of the student.")
_EPOCHS = flags.DEFINE_integer("epochs", 10, "Epochs of each student run (>= 1).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Windows per batch (>= 1).")
_LEARNING_RATE = flags.DEFINE_float(
    "learning_rate", 3e-3, "Adam learning rate, cosine-decayed to 0 over each run (> 0)."
)
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Soft-target temperature T (> 0).")
_STUDENT_LOSS_WEIGHT = flags.DEFINE_float(
    "student_loss_weight", 0.2, "Weight alpha of the label loss, in [0, 1] (1 - alpha on KD)."
)
_TRAIN_WINDOWS = flags.DEFINE_integer(
    "train_windows", None, "Use only the first N training windows (quick runs)."
)
_TEST_WINDOWS = flags.DEFINE_integer(
    "test_windows", None, "Use only the first N held-out windows (quick runs)."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of initialisation and batch order (>= 0).")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", "/tmp/distill_char_lm", "Where to write models, the TFLite file and reports."
)


def _seq_len(name: str, value: int) -> None:
    if validation.positive_int(name, value) < 2:
        raise ValueError(f"{name} must be an integer >= 2, got {value!r}.")


def _open_unit_interval(name: str, value: float) -> None:
    if not 0.0 < validation.real_scalar(name, value) < 1.0:
        raise ValueError(f"{name} must be a real number strictly between 0 and 1, got {value!r}.")


_cli.check_flag("seq_len", _seq_len)
_cli.check_flag("test_fraction", _open_unit_interval)
for _name in ("embedding_dim", "teacher_units", "teacher_layers", "student_units", "epochs",
              "batch_size", "train_windows", "test_windows"):
    _cli.check_flag(_name, validation.positive_int)
_cli.check_flag("teacher_epochs", validation.non_negative_int)
flags.register_multi_flags_validator(
    ["teacher_path", "teacher_epochs"],
    lambda f: f["teacher_path"] is not None or f["teacher_epochs"] >= 1,
    "--teacher_epochs must be at least 1 when no --teacher_path is given.",
)
_cli.check_flag("teacher_path", _cli.existing_file)
_cli.check_flag("learning_rate", validation.positive)
_cli.check_flag("temperature", validation.positive, hint="It is the softening temperature T.")
_cli.check_flag("student_loss_weight", validation.unit_interval)
_cli.check_flag("seed", validation.non_negative_int)
_cli.check_flag("output_dir", _cli.writable_dir)

# ------------------------------------------------------------------------------- data
PAD_ID, BOS_ID, OOV_ID = 0, 1, 2
CHARACTERS = "\n" + "".join(chr(c) for c in range(32, 127))  # newline + printable ASCII
CHAR_IDS = {c: i + 3 for i, c in enumerate(CHARACTERS)}
VOCABULARY_SIZE = len(CHARACTERS) + 3  # 98 ids: padding, begin, OOV, 96 characters


def topic_texts(test_fraction: float) -> tuple[list[str], list[str]]:
    """The topics of `pydoc_data.topics` in sorted key order: `(training texts, test texts)`,
    the last `round(test_fraction * topics)` topics (at least one) held out."""
    from pydoc_data.topics import topics

    texts = [topics[key] for key in sorted(topics)]
    held_out = min(len(texts) - 1, max(1, round(test_fraction * len(texts))))
    return texts[:-held_out], texts[-held_out:]


def windows(texts: list[str], seq_len: int) -> list[str]:
    """Paragraphs (split at blank lines) cut into windows of at most `seq_len` characters."""
    out = []
    for text in texts:
        for paragraph in text.split("\n\n"):
            paragraph = paragraph.strip("\n")
            out.extend(paragraph[i : i + seq_len] for i in range(0, len(paragraph), seq_len))
    return out


def encode(texts: list[str], seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(inputs, targets, mask)`: int32 `[BOS] + w[:-1]` and `w` per window, padded with
    `PAD_ID` to `seq_len`, and the float32 padding mask (1 on the window's characters)."""
    x = np.full((len(texts), seq_len), PAD_ID, np.int32)
    y = np.full((len(texts), seq_len), PAD_ID, np.int32)
    mask = np.zeros((len(texts), seq_len), np.float32)
    for i, text in enumerate(texts):
        ids = [CHAR_IDS.get(c, OOV_ID) for c in text[:seq_len]]
        y[i, : len(ids)] = ids
        x[i, 0] = BOS_ID
        x[i, 1 : len(ids)] = ids[:-1]
        mask[i, : len(ids)] = 1.0
    return x, y, mask


# ------------------------------------------------------------------------------- models
def char_gru(name: str, units: int, layers: int, embedding_dim: int, seq_len: int) -> keras.Model:
    """Embedding -> `layers` x GRU(units, return_sequences) -> Dense logits `(B, T, 98)`."""
    ids = keras.Input((seq_len,), dtype="int32", name=f"{name}_ids")
    h = keras.layers.Embedding(VOCABULARY_SIZE, embedding_dim, name=f"{name}_embedding")(ids)
    for k in range(layers):
        h = keras.layers.GRU(units, return_sequences=True, name=f"{name}_gru_{k}")(h)
    logits = keras.layers.Dense(VOCABULARY_SIZE, name=f"{name}_logits")(h)
    return keras.Model(ids, logits, name=name)


def logits_of(model: keras.Model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """`model`'s logits on `x`, from eager batched calls (no `predict` trace per model)."""
    return np.concatenate([
        keras.ops.convert_to_numpy(model(x[i : i + batch_size], training=False))
        for i in range(0, len(x), batch_size)
    ])


def bits_per_character(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> float:
    """Masked mean next-character cross-entropy in bits: `sum(m * ce) / sum(m) / ln 2`.

    Keras's weighted metrics divide by the summed weights (unlike the losses, which divide by
    the number of positions), so padded positions (weight 0) count nowhere.
    """
    metric = keras.metrics.SparseCategoricalCrossentropy(from_logits=True)
    metric.update_state(targets, logits, sample_weight=mask)
    return float(metric.result()) / math.log(2.0)


def _batches(data: tf.data.Dataset, count: int, batch_size: int, seed: int) -> tf.data.Dataset:
    """Shuffled each epoch in a seed-determined order: the same batches for both students."""
    data = data.shuffle(count, seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    return data.prefetch(tf.data.AUTOTUNE)


def _adam(learning_rate: float, epochs: int, count: int, batch_size: int):
    steps = epochs * -(-count // batch_size)
    return keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, steps))


def _label_loss() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def main(argv):
    del argv
    verbose = _cli.after_flags()
    out = Path(_OUTPUT_DIR.value)
    seq_len, seed, batch_size = _SEQ_LEN.value, _SEED.value, _BATCH_SIZE.value
    print(f"distill_char_lm: character GRU teacher, student from scratch and distilled student "
          f"on CPython's documentation topics; files go to {out}")
    tf.config.experimental.enable_op_determinism()
    out.mkdir(parents=True, exist_ok=True)
    written = []

    train_texts, test_texts = topic_texts(_TEST_FRACTION.value)
    train_windows = windows(train_texts, seq_len)[: _TRAIN_WINDOWS.value]
    test_windows = windows(test_texts, seq_len)[: _TEST_WINDOWS.value]
    x, y, mask = encode(train_windows, seq_len)
    x_test, y_test, mask_test = encode(test_windows, seq_len)
    n = len(x)
    print(f"\nData: pydoc_data.topics, {len(train_texts)} + {len(test_texts)} held-out topics; "
          f"{n:,} training windows ({int(mask.sum()):,} characters) and {len(x_test):,} "
          f"held-out windows ({int(mask_test.sum()):,} characters) of at most {seq_len}; "
          f"{100 * (1 - mask.mean()):.0f} % of the training positions are padding")
    train = tf.data.Dataset.from_tensor_slices((x, y, mask))

    def build(name: str, units: int, layers: int) -> keras.Model:
        return char_gru(name, units, layers, _EMBEDDING_DIM.value, seq_len)

    rows, seconds = {}, {}
    # -------------------------------------------------------------------- teacher
    keras.utils.set_random_seed(seed)
    if _TEACHER_PATH.value:
        teacher = keras.saving.load_model(_TEACHER_PATH.value)
        print(f"\n[1/3] Teacher '{teacher.name}' from {_TEACHER_PATH.value}: "
              f"{teacher.count_params():,} parameters, already trained")
        seconds["teacher"] = 0.0
    else:
        teacher = build("teacher", _TEACHER_UNITS.value, _TEACHER_LAYERS.value)
        epochs = _TEACHER_EPOCHS.value
        print(f"\n[1/3] Teacher: {teacher.count_params():,} parameters, {epochs} epoch(s)")
        teacher.compile(_adam(_LEARNING_RATE.value, epochs, n, batch_size), _label_loss())
        start = time.perf_counter()
        teacher.fit(_batches(train, n, batch_size, seed), epochs=epochs, shuffle=False, verbose=2)
        seconds["teacher"] = time.perf_counter() - start
        teacher.save(out / "teacher.keras")
        written.append(out / "teacher.keras")
    rows["teacher"] = teacher

    # -------------------------------------------------------------------- students
    epochs = _EPOCHS.value
    keras.utils.set_random_seed(seed)
    scratch = build("student", _STUDENT_UNITS.value, 1)
    student = build("student", _STUDENT_UNITS.value, 1)
    student.set_weights(scratch.get_weights())  # the same initial weights
    print(f"\n[2/3] Student from scratch: {scratch.count_params():,} parameters, {epochs} "
          "epoch(s), labels only")
    scratch.compile(_adam(_LEARNING_RATE.value, epochs, n, batch_size), _label_loss())
    start = time.perf_counter()
    scratch.fit(_batches(train, n, batch_size, seed), epochs=epochs, shuffle=False, verbose=2)
    seconds["student (scratch)"] = time.perf_counter() - start
    rows["student (scratch)"] = scratch

    temperature, alpha = _TEMPERATURE.value, _STUDENT_LOSS_WEIGHT.value
    print(f"\n[3/3] Distilled student: same initial weights and batches, T = {temperature:g}, "
          f"alpha = {alpha:g}, {epochs} epoch(s)")
    start = time.perf_counter()
    cached = keras_kd.cache_teacher_logits(teacher, x, y, sample_weight=mask)  # (B, T) weights
    keras.utils.set_random_seed(seed)
    distiller = keras_kd.Distiller(teacher, student, keras_kd.SoftTargetDistillation(temperature),
                                   student_loss_weight=alpha)
    distiller.compile(_adam(_LEARNING_RATE.value, epochs, n, batch_size), _label_loss())
    distiller.fit(_batches(cached, n, batch_size, seed), epochs=epochs, shuffle=False, verbose=2)
    seconds["student (distilled)"] = time.perf_counter() - start
    rows["student (distilled)"] = student

    # -------------------------------------------------------------------- held-out bpc
    bpc = {name: bits_per_character(logits_of(model, x_test), y_test, mask_test)
           for name, model in rows.items()}

    # -------------------------------------------------------------------- TFLite
    print("\nTFLite: the distilled student as float32, batch size 1, run with LiteRT")
    scratch.save(out / "student_scratch.keras")
    student.save(out / "student.keras")
    tflite = export.to_tflite(student, out / "student_float32.tflite", batch_size=1)
    written += [out / "student_scratch.keras", out / "student.keras", tflite]
    with contextlib.nullcontext() if verbose else _cli.without_stderr_lines(_cli.LITERT_NOISE):
        lite_logits = export.tflite_predict(tflite, x_test)
    keras_logits = logits_of(student, x_test)
    real = mask_test > 0
    parity = {
        "windows": len(x_test),
        "positions": int(real.sum()),
        "max_abs_logit_diff": float(np.max(np.abs(lite_logits - keras_logits)[real])),
        "argmax_agreement": float(np.mean(
            lite_logits.argmax(-1)[real] == keras_logits.argmax(-1)[real])),
        "tflite_bpc": bits_per_character(lite_logits, y_test, mask_test),
        "file_kib": tflite.stat().st_size / 1024,
    }

    # -------------------------------------------------------------------- report
    table = [
        "| model | params | GRU | test bpc | train s |",
        "|---|---:|---|---:|---:|",
    ]
    for name, model in rows.items():
        grus = [layer.units for layer in model.layers if isinstance(layer, keras.layers.GRU)]
        gru = f"{len(grus)} x {grus[0]}" if len(grus) > 1 else str(grus[0])
        table.append(f"| {name} | {model.count_params():,} | {gru} | "
                     f"{bpc[name]:.4f} | {seconds[name]:.0f} |")
    gain = bpc["student (scratch)"] - bpc["student (distilled)"]
    lines = [
        f"Held-out text: {len(test_texts)} topics, {len(x_test):,} windows, "
        f"{parity['positions']:,} characters. Distillation: T = {temperature:g}, alpha = "
        f"{alpha:g}; both students {epochs} epoch(s) of {n:,} windows, batch {batch_size}, "
        f"seed {seed}.",
        "",
        *table,
        "",
        f"Distilled minus scratch: {-gain:+.4f} bpc "
        f"({'distillation helped' if gain > 0 else 'distillation did not help'}).",
        "",
        f"TFLite float32 (batch 1, {parity['file_kib']:.1f} KiB) vs Keras on the "
        f"{parity['positions']:,} real held-out positions: max |logit difference| "
        f"{parity['max_abs_logit_diff']:.2e}, argmax agreement "
        f"{100 * parity['argmax_agreement']:.2f} %, bpc {parity['tflite_bpc']:.4f}.",
    ]
    text = "\n".join(lines)
    (out / "report.md").write_text(
        "# Character LM distillation on CPython's documentation topics\n\n" + text + "\n")
    results = {
        "bpc": bpc,
        "seconds": seconds,
        "params": {name: int(model.count_params()) for name, model in rows.items()},
        "parity": parity,
        "settings": {name: flags.FLAGS[name].value for name in (
            "seq_len", "test_fraction", "embedding_dim", "teacher_units", "teacher_layers",
            "teacher_epochs", "teacher_path", "student_units", "epochs", "batch_size",
            "learning_rate", "temperature", "student_loss_weight", "train_windows",
            "test_windows", "seed")},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    written += [out / "report.md", out / "results.json"]
    print("\nSummary\n" + text)
    print("\nWritten:")
    for path in written:
        print(f"    {path}")


if __name__ == "__main__":
    app.run(main)
