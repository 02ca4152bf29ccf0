"""FitNets' two-stage training inside one `fit`: hint pre-training, then the full objective."""

from __future__ import annotations

import weakref

import keras
import numpy as np

from keras_kd.distiller import Distiller
from keras_kd.losses.base import DistillationLoss
from keras_kd.weighting import FixedWeighting

HINT_STAGE, FULL_STAGE = 1, 2

# Layers a HintStage froze, with their original `trainable`. Kept across callback instances so a
# `fit` retried in the same process after an exception in stage 1 (no `on_train_end`) still
# knows which layers it must unfreeze.
_FROZEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Distiller -> (student_loss_weight, fixed path weights) configured before stage 1, likewise.
_OBJECTIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _guided_tensor(student: keras.Model, tap):
    if tap.layer is None:
        return student.outputs[0]
    layer = student.get_layer(tap.layer)
    return layer.input if tap.pre_activation else layer.output


class HintStage(keras.callbacks.Callback):
    """Trains only the student up to the guided layer (+ regressor) on the hint, then everything.

    For epochs `0 .. epochs - 1` (stage 1) the objective is the `hint` loss alone: the hard-label
    weight `student_loss_weight` and every other path weight are set to 0, and the student's
    layers that do not feed the guided layer, the other losses' adapters and a learned path
    weighting are made non-trainable (so their variables, BatchNormalization statistics
    included, do not change). From epoch `epochs` on (stage 2) the configured objective and
    trainability are restored. The stage is derived from the epoch number at each epoch start,
    so a run resumed by `keras.callbacks.BackupAndRestore` continues in the right stage (the
    configured objective is read when `fit` attaches the callback, before a backup written
    during stage 1 is loaded; a `fit` retried in the same process after an exception is
    handled too).

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

    # ------------------------------------------------------------------ setup
    def set_model(self, model):
        super().set_model(model)
        # Read the configured objective here, before `BackupAndRestore.on_train_begin` can load
        # checkpointed schedule variables that hold stage-1 values (0 and a one-hot).
        if isinstance(model, Distiller) and model not in _OBJECTIVE:
            _OBJECTIVE[model] = self._objective(model)

    @staticmethod
    def _objective(model):
        weighting = model.path_weighting
        weights = (
            keras.ops.convert_to_numpy(weighting.weights_variable).copy()
            if isinstance(weighting, FixedWeighting)
            else None
        )
        return float(keras.ops.convert_to_numpy(model.student_loss_weight)), weights

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
        self._hint_index = self._index()
        weighting = model.path_weighting
        if not isinstance(weighting, FixedWeighting) and len(model.distillation_losses) > 1:
            raise ValueError(
                "HintStage selects the hint-only objective through fixed path weights, but the "
                f"Distiller uses {type(weighting).__name__}. Use fixed "
                "distillation_loss_weights with HintStage."
            )
        student = model.student
        taps = self.hint.student_features()
        upstream = keras.Model(student.inputs, [_guided_tensor(student, t) for t in taps])
        keep = {id(layer) for layer in upstream.layers}
        frozen = [layer for layer in student.layers if id(layer) not in keep]
        frozen += [loss for loss in model.distillation_losses if loss is not self.hint]
        frozen.append(weighting)
        self._frozen = frozen
        if model.optimizer is not None and not model.optimizer.built:
            # Build for every variable now, so stage 2 can update the ones frozen in stage 1.
            model.optimizer.build(model.trainable_variables)
        self.stage = None

    # ------------------------------------------------------------------ stages
    def _enter_hint_stage(self) -> None:
        model = self.model
        for layer in self._frozen:
            if layer not in _FROZEN:
                _FROZEN[layer] = layer.trainable
            layer.trainable = False
        weighting = model.path_weighting
        if model not in _OBJECTIVE:
            _OBJECTIVE[model] = self._objective(model)
        model.student_loss_weight.assign(0.0)
        if isinstance(weighting, FixedWeighting):
            one_hot = np.zeros(weighting.num_paths, dtype="float32")
            one_hot[self._hint_index] = 1.0
            weighting.weights_variable.assign(one_hot)

    def _restore(self) -> None:
        model = self.model
        for layer in self._frozen:
            if layer in _FROZEN:
                layer.trainable = _FROZEN.pop(layer)
        if model in _OBJECTIVE:
            alpha, weights = _OBJECTIVE.pop(model)
            model.student_loss_weight.assign(alpha)
            if weights is not None:
                model.path_weighting.weights_variable.assign(weights)

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
        if stage == HINT_STAGE:
            self._enter_hint_stage()
        else:
            self._restore()
            if self.reset_optimizer and epoch == self.epochs:
                self._reset_optimizer()
        self.stage = stage
        self.model.make_train_function(force=True)
        if self.verbose:
            name = "hint (stage 1)" if stage == HINT_STAGE else "full objective (stage 2)"
            print(f"\nEpoch {epoch + 1}: HintStage trains on the {name}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.stage is not None:
            logs["hint_stage"] = self.stage

    def on_train_end(self, logs=None):
        if self.stage == HINT_STAGE:
            self._restore()
            self.model.make_train_function(force=True)
        self.stage = None
