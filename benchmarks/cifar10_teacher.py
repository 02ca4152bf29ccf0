r"""Trains the CIFAR-10 teacher of the benchmark table: ResNet-20 (He et al. 2016), 0.27 M params.

Standard augmentation (pad 4, random crop, flip), SGD with Nesterov momentum 0.9, L2 5e-4 on conv
kernels (as weight decay 5e-4 in the PyTorch convention), batch 128, one warm-up epoch to
learning rate 0.1 then cosine decay to 0. The trained model is saved to
`benchmarks/weights/cifar10_resnet20.keras` (committed, 1.3 MB) so every student row can be
reproduced without retraining. On 2 quiet CPU cores an epoch takes about 66 s (25 epochs:
60.5 min here, on a machine shared with other jobs): 86.48 % test accuracy.

Usage:
  nice python benchmarks/cifar10_teacher.py --epochs=25 > teacher.log 2>&1 &
"""

from __future__ import annotations

import os
import time

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from _cifar import DEFAULT_NPZ, TEACHER_PATH, arrays, test_dataset, train_dataset  # noqa: E402

from keras_kd.models import resnet_cifar  # noqa: E402

_EPOCHS = flags.DEFINE_integer("epochs", 25, "Training epochs.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Batch size.")
_LR = flags.DEFINE_float("learning_rate", 0.1, "Peak learning rate (after one warm-up epoch).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the initialisation and data order.")
_NPZ = flags.DEFINE_string("cifar_npz", DEFAULT_NPZ, "Path of cifar10_jpeg_yoongikim.npz.")
_OUT = flags.DEFINE_string("output", TEACHER_PATH, "Where to save the trained teacher.")


def main(argv):
    del argv
    keras.utils.set_random_seed(_SEED.value)
    (x_train, y_train), (x_test, y_test) = arrays(_NPZ.value)
    steps = int(np.ceil(len(x_train) / _BATCH.value))
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, (_EPOCHS.value - 1) * steps, warmup_target=_LR.value, warmup_steps=steps
    )
    model = resnet_cifar(20, weight_decay=2.5e-4, name="resnet20")
    model.compile(
        optimizer=keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(
        train_dataset(x_train, y_train, _BATCH.value, _SEED.value),
        epochs=_EPOCHS.value,
        validation_data=test_dataset(x_test, y_test),
        verbose=2,
    )
    _, accuracy = model.evaluate(test_dataset(x_test, y_test), verbose=0)
    os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
    deployed = resnet_cifar(20, weight_decay=2.5e-4, name="resnet20")  # no optimizer state
    deployed.set_weights(model.get_weights())
    deployed.save(_OUT.value)
    print(
        f"teacher test accuracy {accuracy:.4f} after {_EPOCHS.value} epochs in "
        f"{(time.perf_counter() - start) / 60:.1f} min; saved to {_OUT.value}"
    )


if __name__ == "__main__":
    app.run(main)
