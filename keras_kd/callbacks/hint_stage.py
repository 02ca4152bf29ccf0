"""FitNets' two-stage training inside one `fit`: hint pre-training, then the full objective."""

from __future__ import annotations

import keras
import numpy as np

from keras_kd.distiller import Distiller
from keras_kd.losses.base import DistillationLoss
from keras_kd.weighting import FixedWeighting

HINT_STAGE, FULL_STAGE = 1, 2


class HintStage(keras.callbacks.Callback):
    """Trains only the student up to the guided layer (+ adapter) on the hint, then everything.

    For epochs `0 .. epochs - 1` (stage 1) the objective is the `hint` loss alone: the callback
    sets the Distiller's `path_focus` variable to the hint's path (`Distiller.set_focus`), which
    restricts the objective to that path and freezes, for the Distiller's training only, the
    student's layers that do not feed the guided layer, the other losses' adapters and a learned
    path weighting (so their variables, BatchNormalization statistics included, do not change).
    From epoch `epochs` on (stage 2) the focus is cleared: the configured objective
    (`student_loss_weight`, path weights: never modified) and trainability are back.

    The stage lives in the Distiller's `path_focus` variable, so every checkpoint carries it: a
    `.keras` file or weights saved during stage 1 reload in stage 1 with the configured
    objective and the configured trainability in its config, and the optimizer state intact.
    The stage is also derived from the epoch number at each epoch start, so a run resumed by
    `keras.callbacks.BackupAndRestore` (or `fit(initial_epoch=...)`) continues in the right
    stage. No state is kept outside the model.

    Keras traces the train step once, so the callback rebuilds it (`make_train_function(
    force=True)`) whenever the stage changes; this costs one retrace per switch.

    Optimizer state: during stage 1 only the stage-1 variables get optimizer updates; the
    moments of every other variable stay zero. With `reset_optimizer=True` (default) all
    optimizer variables except the learning rate (iteration counter and moments) are zeroed at
    the first epoch of stage 2, so stage 2 starts like a fresh optimizer on the full objective,
    as in the paper's two separate trainings (a learning-rate schedule restarts too). With
    `False` the state carries over: Adam's bias correction then no longer compensates for the
    zero moments of the not-yet-trained variables, whose first updates are larger.

    Args:
        hint: the Distiller's hint loss (e.g. a `HintDistillation` instance passed in
            `distillation_losses`); its student taps are the guided layers.
        epochs: number of stage-1 epochs (>= 1).
        reset_optimizer: zero the optimizer state at the switch (see above).
        verbose: print the stage when it changes.

    Raises:
        ValueError: if `hint` is not one of the Distiller's losses, or the Distiller uses a
            learned path weighting whose objective cannot be narrowed to the hint.

    Example:
        >>> hint = keras_kd.losses.HintDistillation("teacher_mid", "student_mid")
        >>> distiller = keras_kd.Distiller(teacher, student, ["soft_target", hint])
        >>> distiller.compile(
        ...     "adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        >>> distiller.fit(ds, epochs=12, callbacks=[keras_kd.callbacks.HintStage(hint, 2)])

    The stage is logged as `hint_stage` (1 or 2) each epoch.

    Reference:
        Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015, Section 2.2 and
        Algorithm 1 (hint-based training, then knowledge distillation of the whole network).
    """

    def __init__(self, hint: DistillationLoss, epochs: int, reset_optimizer: bool = True,
                 verbose: int = 0):
        super().__init__()
        if not isinstance(hint, DistillationLoss):
            raise TypeError(
                f"hint must be the DistillationLoss instance given to the Distiller, got {hint!r}."
            )
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}.")
        self.hint = hint
        self.epochs = epochs
        self.reset_optimizer = bool(reset_optimizer)
        self.verbose = verbose
        self.stage = None
        self._frozen = []

    # ------------------------------------------------------------------ stages
    def _index(self) -> int:
        for i, loss in enumerate(self.model.distillation_losses):
            if loss is self.hint:
                return i
        raise ValueError(
            f"HintStage: the hint loss '{self.hint.name}' is not one of the Distiller's "
            f"distillation_losses {[loss.name for loss in self.model.distillation_losses]}."
        )

    def on_train_begin(self, logs=None):
        model = self.model
        if not isinstance(model, Distiller):
            raise TypeError(f"HintStage works with a keras_kd.Distiller, got {type(model)!r}.")
        self._hint_index = self._index()
        weighting = model.path_weighting
        if not isinstance(weighting, FixedWeighting) and len(model.distillation_losses) > 1:
            raise ValueError(
                "HintStage selects the hint-only objective through the Distiller's path "
                f"focus, but the Distiller uses {type(weighting).__name__}, whose learned "
                "weights would freeze: use fixed distillation_loss_weights with HintStage."
            )
        if model.optimizer is not None and not model.optimizer.built:
            # Build for every variable now, so stage 2 can update the ones frozen in stage 1.
            model.optimizer.build(model.trainable_variables)
        self.stage = None

    def _reset_optimizer(self) -> None:
        optimizer = self.model.optimizer
        learning_rate = optimizer.learning_rate
        for variable in optimizer.variables:
            if variable is learning_rate:
                continue
            variable.assign(np.zeros(variable.shape, dtype=variable.dtype))

    def on_epoch_begin(self, epoch, logs=None):
        stage = HINT_STAGE if epoch < self.epochs else FULL_STAGE
        if stage == self.stage:
            return
        model = self.model
        if stage == HINT_STAGE:
            focus = np.zeros(len(model.distillation_losses), "float32")
            focus[self._hint_index] = 1.0
            model.set_focus(focus)
        else:
            model.set_focus(None)
            if self.reset_optimizer and epoch == self.epochs:
                self._reset_optimizer()
        self.stage = stage
        model.make_train_function(force=True)
        if self.verbose:
            name = "hint (stage 1)" if stage == HINT_STAGE else "full objective (stage 2)"
            print(f"\nEpoch {epoch + 1}: HintStage trains on the {name}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.stage is not None:
            logs["hint_stage"] = self.stage

    def on_train_end(self, logs=None):
        if self.stage == HINT_STAGE:
            self.model.set_focus(None)
            self.model.make_train_function(force=True)
        self.stage = None
