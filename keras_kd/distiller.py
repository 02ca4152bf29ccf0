"""`Distiller`: a `keras.Model` whose `train_step` teaches a student from a frozen teacher."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_kd import losses as kd_losses
from keras_kd import validation
from keras_kd.features import (
    FeatureExtractor,
    OutputInfo,
    shared_variables,
    static_input_shape,
    static_output_shape,
)
from keras_kd.losses.base import LOGITS, DistillationLoss, Tap
from keras_kd.losses.top_k_soft_target import TopKTap, add_top_k_tensors, model_taps
from keras_kd.objective import (
    LabelLoss,
    StepResult,
    TrainingModel,
    term_weights,
    warn_if_probability_loss_on_logits,
    weighted_mean,
)
from keras_kd.precision import check_precision, compute_precision
from keras_kd.teachers.cached import (
    CACHE_INPUTS_KEY,
    CACHE_OUTPUTS_KEY,
    is_cached_batch,
)
from keras_kd.weighting import FixedWeighting, PathWeighting

OUTPUT_KINDS = ("auto", "logits", "probabilities")
# Smallest positive normal float32: probabilities that underflowed to 0 are read as this.
_TINY = float(np.finfo(np.float32).tiny)


class InputCheckError(ValueError):
    """Raised by `Distiller.check_inputs`: outputs or losses that would train on wrong values."""


class ModelTypeError(TypeError, ValueError):
    """A teacher or student that is not a `keras.Model` (a `TypeError`; also a `ValueError`,
    which is what `keras.distillation.Distiller` raises, so code written for it still works)."""


# ---------------------------------------------------------------------- construction steps
def _check_models(teacher, student) -> None:
    if teacher is not None and not isinstance(teacher, keras.Model):
        raise ModelTypeError(
            f"teacher must be a keras.Model or None, got {type(teacher)!r}. Pass the trained "
            "teacher, or None when every batch carries cached teacher outputs."
        )
    if not isinstance(student, keras.Model):
        raise ModelTypeError(f"student must be a keras.Model, got {type(student)!r}.")
    if teacher is student:
        raise ValueError("teacher and student must be different models.")
    if teacher is None:
        return
    shared = [v.path for v in shared_variables(teacher, student)]
    if shared:
        raise ValueError(
            f"The student shares {len(shared)} variable(s) with the teacher (e.g. "
            f"{shared[0]!r}): the Distiller keeps the teacher frozen, so those layers would "
            "silently stop training. To train a light net and a booster that share layers, "
            "use keras_kd.online.RocketLaunching; otherwise give the student its own layers."
        )


def _check_output_kind(name: str, value: str) -> str:
    if value not in OUTPUT_KINDS:
        raise ValueError(
            f"{name} must be one of {OUTPUT_KINDS}, got {value!r}: 'logits' for pre-softmax "
            "outputs, 'probabilities' for softmax/sigmoid outputs the graph does not show, "
            "'auto' to read the model's graph and check the first batch."
        )
    return value


def _default_loss(info: OutputInfo, student: keras.Model) -> DistillationLoss:
    """The soft-target loss of the student's output family, or a clear refusal."""
    if info.activation == "sigmoid":
        return kd_losses.BinarySoftTargetDistillation(temperature=4.0)
    if info.units == 1:
        raise ValueError(
            f"The student '{student.name}' has one output unit without a visible activation, "
            "so the kind of output is ambiguous (a softmax over one unit is constant and its "
            "distillation loss identically 0). Pass distillation_losses="
            "keras_kd.losses.BinarySoftTargetDistillation() for a binary classifier that "
            "outputs one logit, or keras_kd.losses.OutputMatchingDistillation() for regression."
        )
    return kd_losses.SoftTargetDistillation(temperature=4.0)


def _resolve_losses(distillation_losses, info: OutputInfo, student) -> list[DistillationLoss]:
    if distillation_losses is None:
        return [_default_loss(info, student)]
    if not isinstance(distillation_losses, (list, tuple)):
        distillation_losses = [distillation_losses]
    if not distillation_losses:
        raise ValueError(
            "distillation_losses must name at least one loss, got an empty list. Pass e.g. "
            "keras_kd.losses.SoftTargetDistillation(), or None for the default."
        )
    losses = [kd_losses.get(loss) for loss in distillation_losses]
    if len({id(loss) for loss in losses}) != len(losses):
        raise ValueError("distillation_losses lists the same loss object twice; pass a new "
                         "instance for each path.")
    return losses


def _resolve_weighting(weights, count: int) -> PathWeighting:
    if isinstance(weights, PathWeighting):
        if weights.num_paths not in (None, count):
            raise ValueError(
                f"distillation_loss_weights was built for {weights.num_paths} paths but there "
                f"are {count} distillation_losses."
            )
        return weights
    if weights is None:
        weights = [1.0] * count
    elif not isinstance(weights, (list, tuple, np.ndarray)):
        weights = [weights]
    values = validation.weights("distillation_loss_weights", weights, count)
    return FixedWeighting(values, name="distillation_loss_weights")


def _check_families(losses, info: OutputInfo, student) -> None:
    """Refuses a loss that reads the student's outputs as the wrong kind of distribution."""
    for loss in losses:
        family = loss.output_family()
        if family == "categorical":
            if info.units == 1:
                raise ValueError(
                    f"{type(loss).__name__} compares softmax distributions, but the student "
                    f"'{student.name}' has one output unit: a softmax over one unit is "
                    "constant, so the loss would be identically 0. Use keras_kd.losses."
                    "BinarySoftTargetDistillation() for a binary (sigmoid) output."
                )
            if info.activation == "sigmoid":
                raise ValueError(
                    f"{type(loss).__name__} compares softmax distributions, but the student "
                    f"'{student.name}' ends in a sigmoid (independent binary units, e.g. "
                    "multi-label). Use keras_kd.losses.BinarySoftTargetDistillation()."
                )
        elif family == "bernoulli" and info.activation == "softmax":
            raise ValueError(
                f"{type(loss).__name__} compares independent sigmoid units, but the student "
                f"'{student.name}' ends in a softmax. Use keras_kd.losses."
                "SoftTargetDistillation() for a softmax classifier."
            )


def _log_names(losses: Sequence[DistillationLoss]) -> list[str]:
    """Each loss's `log_name`; repeats get `_1`, `_2`, ... as Keras numbers layer names."""
    names, counts = [], {}
    for loss in losses:
        base = loss.log_name
        names.append(f"{base}_{counts[base]}" if base in counts else base)
        counts[base] = counts.get(base, 0) + 1
    return names


def _taps(losses, side: str) -> tuple[Tap, ...]:
    method = "teacher_taps" if side == "teacher" else "student_taps"
    return tuple(dict.fromkeys(t for loss in losses for t in getattr(loss, method)()))


def _input_names(model: keras.Model | None) -> set[str]:
    if model is None:
        return set()
    try:
        return {getattr(t, "name", "") for t in model.inputs}
    except (AttributeError, ValueError):
        return set()


def _probabilities_to_logits(values, family: str | None):
    """Logits up to a per-example shift (exact for softmax and sigmoid losses)."""
    values = ops.cast(values, "float32")
    if family == "bernoulli":
        p = ops.clip(values, _TINY, 1.0 - 2.0**-24)
        return ops.log(p) - ops.log1p(-p)
    return ops.log(ops.maximum(values, _TINY))


@keras.saving.register_keras_serializable(package="keras_kd")
class Distiller(TrainingModel):
    """Trains `student` on `alpha * label_loss + (1 - alpha) * sum_i w_i * distillation_i`.

    The teacher is frozen for the Distiller's training (its variables are never in
    `trainable_variables`; the user's teacher object is left as it was) and always called
    with `training=False`, outside the gradient tape. Each model runs forward once per step:
    all the tensors the losses ask for (logits, intermediate features) come from one
    multi-output call of each model, keyed by the `Tap` that names them. Every term is
    computed in float32 per example (or per position for sequence and dense outputs) and
    reduced like a Keras loss, `mean(w * l)` over all elements, so `sample_weight`,
    `class_weight` and `(batch, steps)` padding masks act on every term alike (a dict
    `{"label": w_l, "distillation": w_d}` weighs the two kinds of term apart, see
    `keras_kd.objective.term_weights`). Under
    `tf.distribute` the per-replica loss is divided by the number of replicas, so the summed
    gradients equal the single-device ones.

    Output kinds. The `LOGITS` tap is each model's pre-activation output: a final softmax or
    sigmoid in the graph is undone exactly (see `keras_kd.features`). The default loss follows
    the student's output: `SoftTargetDistillation` for softmax classifiers (logits with two
    or more units), `BinarySoftTargetDistillation` for sigmoid outputs (binary, multi-label);
    one unit without activation is ambiguous and refused. Regression students use
    `OutputMatchingDistillation`, chosen explicitly. A loss that reads the outputs as the wrong
    kind of distribution, a compiled label loss of another kind, probabilities on the first
    batch of a model read as logits, and a distillation loss that is identically 0 on the
    first batch although the two models differ are all refused before any weight changes.

    Args:
        teacher: the trained teacher `keras.Model`, or `None` when every batch carries cached
            teacher outputs (see `keras_kd.cache_teacher_outputs`).
        student: the `keras.Model` to train. `predict`/`call` return its outputs, and
            `distiller.student.save(...)` saves it alone.
        distillation_losses: a `keras_kd.losses.DistillationLoss`, a registered name, or a
            list of them. Default: the soft-target loss of the student's output kind, T = 4.
        distillation_loss_weights: one non-negative weight per distillation loss (default all
            1.0), or a `keras_kd.weighting.PathWeighting` (e.g. learned weights).
        student_loss_weight: `alpha` in [0, 1], the weight of the label loss given to
            `compile(loss=...)`. A non-trainable variable (schedulable).
        teacher_input_fn: maps a batch of student inputs to the teacher's inputs (another
            resolution, the teacher's own normalisation, ...), applied inside the step and by
            `cache_teacher_outputs`. Shapes are checked at construction.
        teacher_output: "auto" (read the graph, check the first batch), "logits" or
            "probabilities" (a subclassed teacher that returns softmax/sigmoid outputs: their
            logarithm is used, which is exact for the soft-target losses up to float32
            underflow of probabilities below 1.2e-38).
        student_output: the same for the student.
        teacher_precision: "float32" (default, `None`), "bfloat16" or "float16": run only the
            teacher's forward pass under that mixed-precision policy (its variables and the
            user's model are unchanged; its outputs are cast to float32 for the losses).
            bfloat16 made the teacher forward about 1.75x faster on the CPUs measured, at a
            small change of the distillation loss (BENCHMARKS.md); use it when the teacher
            forward dominates the step and the teacher was not trained to need float32.
        name: model name.

    Raises:
        TypeError, ValueError: for any invalid argument or incompatible pair of models, with
            the argument named and what to pass instead.

    Example:
        >>> distiller = keras_kd.Distiller(teacher, student, student_loss_weight=0.1)
        >>> distiller.compile(
        ...     "adam",
        ...     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        ...     metrics=["accuracy"])
        >>> distiller.fit(train_ds, validation_data=test_ds, epochs=5)
        >>> distiller.student.save("student.keras")

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
        `L = alpha * CE(y, s) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))`.
    """

    def __init__(
        self,
        teacher: keras.Model | None = None,
        student: keras.Model | None = None,
        distillation_losses: DistillationLoss | str | Sequence | None = None,
        distillation_loss_weights: Sequence[float] | PathWeighting | None = None,
        student_loss_weight: float = 0.1,
        *,
        teacher_input_fn: Callable | None = None,
        teacher_output: str = "auto",
        student_output: str = "auto",
        teacher_precision: str | None = None,
        name: str = "distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        _check_models(teacher, student)
        alpha = validation.unit_interval(
            "student_loss_weight", student_loss_weight,
            hint="It is alpha, the weight of the label loss.")
        if teacher_input_fn is not None and not callable(teacher_input_fn):
            raise TypeError(f"teacher_input_fn must be callable or None, got "
                            f"{teacher_input_fn!r}.")
        self._teacher_output = _check_output_kind("teacher_output", teacher_output)
        self._student_output = _check_output_kind("student_output", student_output)
        self.teacher_precision = check_precision("teacher_precision", teacher_precision)
        self.teacher = teacher
        self.student = student
        self.teacher_input_fn = teacher_input_fn

        student_info = FeatureExtractor(student, (), "student").info
        losses = _resolve_losses(distillation_losses, student_info, student)
        _check_families(losses, student_info, student)
        self.distillation_losses = losses
        self.path_weighting = _resolve_weighting(distillation_loss_weights, len(losses))
        self.student_loss_weight = keras.Variable(
            alpha, trainable=False, dtype="float32", name="student_loss_weight")
        # Staged training (FitNets' hint stage): a non-zero focus restricts the objective to
        # sum_i focus_i * d_i. A variable, so checkpoints carry the stage.
        self.path_focus = keras.Variable(
            np.zeros(len(losses), "float32"), trainable=False, dtype="float32",
            name="path_focus")
        self._initial_student_loss_weight = alpha

        self._build_extractors()
        self._check_teacher_inputs()
        self._build_losses()
        self._log_keys = _log_names(losses)
        self.track(*self._logged_keys())
        self._stage_frozen: list = []
        self._applied_focus = None
        self._inputs_checked = False
        self.built = True

    # ------------------------------------------------------------------ construction
    def _build_extractors(self) -> None:
        losses, teacher, student = self.distillation_losses, self.teacher, self.student
        self._teacher_taps = _taps(losses, "teacher")
        student_taps = _taps(losses, "student")
        if teacher is None and any(tap != LOGITS and not isinstance(tap, TopKTap)
                                   for tap in self._teacher_taps):
            raise ValueError(
                "teacher=None works only with losses on logits, but the distillation_losses "
                f"tap teacher layers {[t.describe() for t in self._teacher_taps if t != LOGITS]}"
                ". Pass the teacher model (its adapters are sized from its layers); batches "
                "with cached teacher outputs still skip the teacher call."
            )
        reserved = {CACHE_INPUTS_KEY, CACHE_OUTPUTS_KEY}
        for role, model in (("teacher", teacher), ("student", student)):
            clash = _input_names(model) & reserved
            if clash:
                raise ValueError(
                    f"The {role}'s input is named {sorted(clash)}, a key keras_kd reserves for "
                    "cached teacher batches. Rename that keras.Input."
                )
        self._student_features = FeatureExtractor(student, student_taps, "student")
        self._teacher_features = (
            FeatureExtractor(teacher, model_taps(self._teacher_taps), "teacher") if teacher
            else None)
        t_info = self._teacher_features.info if self._teacher_features else None
        s_info = self._student_features.info
        for role, info, declared in (("teacher", t_info, self._teacher_output),
                                     ("student", s_info, self._student_output)):
            if info is not None and declared == "logits" and info.activation is not None:
                raise ValueError(
                    f"{role}_output='logits' but the {role}'s graph ends in a "
                    f"{info.activation}; its logits are recovered from the graph anyway: "
                    f"leave {role}_output='auto'."
                )
        t_shape = static_output_shape(teacher)
        s_shape = static_output_shape(student)
        if t_shape is not None and s_shape is not None and t_shape != s_shape:
            raise ValueError(
                f"Teacher output shape {t_shape} differs from student output shape {s_shape}; "
                "both must predict the same classes (and positions)."
            )

    def _check_teacher_inputs(self) -> None:
        """Checks at construction that the teacher can take the (mapped) student inputs."""
        if self.teacher is None:
            return
        t_shape = static_input_shape(self.teacher)
        s_shape = static_input_shape(self.student)
        if t_shape is None or s_shape is None:
            return
        if self.teacher_input_fn is None:
            if t_shape != s_shape:
                raise ValueError(
                    f"The teacher takes inputs of shape {t_shape} but the student {s_shape}. "
                    "Pass teacher_input_fn=..., a function mapping a batch of student inputs "
                    "to the teacher's (e.g. lambda x: keras.ops.image.resize(x, (32, 32)))."
                )
            return
        if any(d is None for d in s_shape):
            return
        probe = ops.zeros((2, *s_shape), dtype=self.student.inputs[0].dtype)
        try:
            mapped = self.teacher_input_fn(probe)
        except Exception as error:  # noqa: BLE001 - re-raised with context
            raise ValueError(
                f"teacher_input_fn failed on a batch of student inputs of shape (2, "
                f"{', '.join(map(str, s_shape))}): {error}"
            ) from error
        got = tuple(mapped.shape[1:])
        if any(a is not None and b is not None and a != b for a, b in zip(got, t_shape)) or (
            len(got) != len(t_shape)
        ):
            raise ValueError(
                f"teacher_input_fn maps student inputs of shape {s_shape} to {got}, but the "
                f"teacher takes {t_shape}. Make it return the teacher's input shape."
            )

    def _build_losses(self) -> None:
        if self._teacher_features is None or not self._student_features.is_graph:
            return
        t_shapes = self._teacher_features.shapes()
        s_shapes = self._student_features.shapes()
        for loss in self.distillation_losses:
            loss.build(tuple(t_shapes.get(t) for t in loss.teacher_taps()),
                       tuple(s_shapes[t] for t in loss.student_taps()))

    def _logged_keys(self) -> tuple[list[str], list[str]]:
        # `total_loss` repeats `loss` under keras.distillation's name for it.
        names = ["loss", "total_loss", "student_loss", "distillation_loss"]
        if len(self.distillation_losses) > 1:
            names += [f"{key}_loss" for key in self._log_keys]
        gauges = (
            [f"{key}_weight" for key in self._log_keys]
            if self.path_weighting.trainable_weights else []
        )
        return names, gauges

    # ------------------------------------------------------------------ properties
    @property
    def distillation_loss_weights(self) -> list[float] | PathWeighting:
        """The current path weights as Python floats (the shortest decimal of each float32
        value: `[0.7, 0.3]`, not `[0.699999988, ...]`), or the learned `PathWeighting`."""
        weighting = self.path_weighting
        if not isinstance(weighting, FixedWeighting):
            return weighting
        return [float(str(w)) for w in ops.convert_to_numpy(weighting.weights_variable)]

    @property
    def _teacher_feature_extractor(self) -> keras.Model | None:
        """keras.distillation's name for the teacher's multi-output model (or `None`)."""
        return self._teacher_features.model_with_taps if self._teacher_features else None

    @property
    def _student_feature_extractor(self) -> keras.Model | None:
        """keras.distillation's name for the student's multi-output model (or `None`)."""
        return self._student_features.model_with_taps

    @property
    def teacher_taps(self) -> tuple[Tap, ...]:
        """The teacher tensors the losses need (cached outputs are keyed by `tap.key`)."""
        return self._teacher_taps

    def frozen_models(self) -> list:
        """The teacher: never in `trainable_variables`, whatever its `trainable` flag (the
        user's teacher object is not changed)."""
        return [self.teacher]

    # ------------------------------------------------------------------ compile
    def check_compile(self, label_loss: LabelLoss | None) -> None:
        if label_loss is None:
            if self._initial_student_loss_weight > 0:
                raise ValueError(
                    "compile(loss=...) is required when student_loss_weight > 0 (got "
                    f"{self._initial_student_loss_weight}): pass the label loss, e.g. "
                    "loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), or set "
                    "student_loss_weight=0."
                )
            return
        info = self._student_features.info
        warn_if_probability_loss_on_logits(
            label_loss, self.student, "student",
            outputs_logits=info.known and info.activation is None
            and self._student_output != "probabilities",
        )
        families = {loss.output_family() for loss in self.distillation_losses} - {None}
        kind = label_loss.kind
        expected = kind if kind in ("categorical", "bernoulli") else None
        if kind == "regression" and families:
            raise ValueError(
                f"compile(loss={label_loss.config!r}) is a regression loss, but the "
                f"distillation losses compare {sorted(families)} distributions. For a "
                "regression student pass distillation_losses=keras_kd.losses."
                "OutputMatchingDistillation()."
            )
        if expected is not None and families - {expected}:
            fix = ("BinarySoftTargetDistillation" if expected == "bernoulli"
                   else "SoftTargetDistillation")
            raise ValueError(
                f"compile(loss={label_loss.config!r}) treats the outputs as {expected}, but "
                f"the distillation losses compare {sorted(families)} distributions. Use "
                f"keras_kd.losses.{fix}() (or compile the matching label loss)."
            )

    # ------------------------------------------------------------------ staged training
    def set_focus(self, focus: Sequence[float] | None) -> None:
        """Restricts the objective to `sum_i focus_i * d_i` (None or zeros: the full one).

        While a focus is set, the student layers that do not feed the focused losses' student
        taps, the other losses' adapters and a learned weighting are frozen for this
        Distiller's training (restored when the focus is cleared; `get_config` always reports
        the configured trainability). Used by `keras_kd.callbacks.HintStage`.
        """
        values = np.zeros(len(self.distillation_losses), "float32")
        if focus is not None:
            values = np.asarray(validation.weights(
                "focus", list(focus), len(self.distillation_losses)), "float32")
        self.path_focus.assign(values)
        self._apply_focus()

    def _apply_focus(self) -> None:
        focus = tuple(float(v) for v in ops.convert_to_numpy(self.path_focus))
        if focus == self._applied_focus:
            return
        self._unfreeze()
        if any(focus):
            focused = [loss for loss, f in zip(self.distillation_losses, focus) if f]
            taps = _taps(focused, "student")
            student = self.student
            tensors = []
            for tap in taps:
                if tap.layer is None:
                    tensors.append(student.outputs[0])
                else:
                    layer = student.get_layer(tap.layer)
                    tensors.append(layer.input if tap.pre_activation else layer.output)
            upstream = keras.Model(student.inputs, tensors)
            keep = {id(layer) for layer in upstream.layers}
            frozen = [layer for layer in student.layers if id(layer) not in keep]
            frozen += [loss for loss in self.distillation_losses if loss not in focused]
            frozen.append(self.path_weighting)
            self._stage_frozen = [(layer, layer.trainable) for layer in frozen]
            for layer in frozen:
                layer.trainable = False
        self._applied_focus = focus

    def _unfreeze(self) -> None:
        for layer, trainable in self._stage_frozen:
            layer.trainable = trainable
        self._stage_frozen = []

    @contextlib.contextmanager
    def _configured_trainability(self):
        frozen = list(self._stage_frozen)
        self._unfreeze()
        try:
            yield
        finally:
            for layer, _ in frozen:
                layer.trainable = False
            self._stage_frozen = frozen

    def make_train_function(self, force=False):
        # The focus is a variable (restored by checkpoints): apply it before tracing.
        previous = self._applied_focus
        self._apply_focus()
        return super().make_train_function(force=force or previous != self._applied_focus)

    # ------------------------------------------------------------------ first-batch checks
    def fit(self, x=None, y=None, batch_size=None, *args, **kwargs):
        x, y = self._check_first_batch(x, y, batch_size, kwargs.get("sample_weight"))
        return super().fit(x, y, batch_size, *args, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, *args, **kwargs):
        x, y = self._check_first_batch(x, y, batch_size, kwargs.get("sample_weight"))
        return super().evaluate(x, y, batch_size, *args, **kwargs)

    def _check_first_batch(self, x, y, batch_size, sample_weight):
        if self._inputs_checked or x is None:
            return x, y
        synthetic = isinstance(x, tf.data.Dataset)
        x, first = _peek(x, y, batch_size)
        if first is None:
            return x, y
        bx, by, _ = keras.utils.unpack_x_y_sample_weight(first)
        if not synthetic:
            self.check_inputs(bx, by)
            return x, y
        try:
            self.check_inputs(bx, by)
        except InputCheckError:
            raise
        except Exception:  # noqa: BLE001 - random inputs the models cannot take: no check
            pass
        return x, y

    def check_inputs(self, x, y=None) -> None:
        """Checks one batch before any training; `fit` and `evaluate` call it on their first.

        Runs the teacher (or reads the cache) and the student once, in inference mode, and
        refuses, with what to do: outputs read as logits that are probabilities (non-negative
        rows summing to 1, for models whose graph shows no softmax), teacher and student
        logits with different class counts, and a distillation loss that is identically 0
        although the two models' outputs differ. Done once per Distiller.

        Raises:
            InputCheckError: (a `ValueError`) as described above.
        """
        inputs, teacher = self.signals(x)
        student_out, student = self._student_features(inputs, training=False)
        student = self._convert_student(student)
        for role, tensors, declared, info in (
            ("teacher", teacher, self._teacher_output,
             self._teacher_features.info if self._teacher_features else None),
            ("student", student, self._student_output, self._student_features.info),
        ):
            if LOGITS not in tensors or declared != "auto":
                continue
            if info is not None and info.known and info.activation is not None:
                continue
            _refuse_probabilities(role, ops.convert_to_numpy(tensors[LOGITS]))
        if LOGITS in teacher and LOGITS in student:
            t = ops.convert_to_numpy(teacher[LOGITS])
            s = ops.convert_to_numpy(student[LOGITS])
            if t.shape[-1:] != s.shape[-1:]:
                raise InputCheckError(
                    f"Teacher logits have {t.shape[-1]} classes but student logits have "
                    f"{s.shape[-1]}; both must predict the same classes."
                )
            differ = not np.array_equal(t, s)
            for loss, key in zip(self.distillation_losses, self._log_keys):
                if tuple(loss.teacher_taps()) != (LOGITS,) or not differ:
                    continue
                values = ops.convert_to_numpy(self._path_values(loss, teacher, student, y))
                if values.size and not np.any(values):
                    raise InputCheckError(
                        f"The distillation loss '{key}' ({type(loss).__name__}) is identically "
                        "0 on the first batch although the teacher's and the student's "
                        "outputs differ: it cannot teach anything. Check that the loss "
                        "matches the output kind (softmax classes, sigmoid units, "
                        "regression) and the declared teacher_output/student_output."
                    )
        self._inputs_checked = True

    # ------------------------------------------------------------------ the step
    def call(self, inputs, training=None):
        """Returns the student's outputs (cached-teacher batches are accepted too)."""
        if is_cached_batch(inputs):
            inputs = inputs[CACHE_INPUTS_KEY]
        return self.student(inputs, training=training)

    def signals(self, x):
        """`(student inputs, {tap: teacher tensor})` from the cache or one teacher call."""
        if is_cached_batch(x):
            cached = x[CACHE_OUTPUTS_KEY]
            wanted = [tap.key for tap in self._teacher_taps]
            missing = [key for key in wanted if key not in cached]
            if missing:
                raise ValueError(
                    f"The batch carries cached teacher outputs {sorted(cached)} but the "
                    f"distillation losses also need {missing}. Cache with "
                    "keras_kd.cache_teacher_outputs(teacher, data, taps=distiller.teacher_taps)."
                )
            tensors = {tap: ops.cast(cached[tap.key], "float32") for tap in self._teacher_taps}
            return x[CACHE_INPUTS_KEY], self._convert(tensors, self._teacher_output)
        if self._teacher_features is None:
            raise ValueError(
                "This Distiller has no teacher, so every batch must carry cached teacher "
                "outputs (see keras_kd.cache_teacher_outputs)."
            )
        teacher_x = self.teacher_input_fn(x) if self.teacher_input_fn is not None else x
        with compute_precision([self.teacher, self._teacher_features.model_with_taps],
                               self.teacher_precision):
            _, tensors = self._teacher_features(teacher_x, training=False)
        tensors = {tap: ops.stop_gradient(ops.cast(t, "float32")) for tap, t in tensors.items()}
        return x, add_top_k_tensors(self._convert(tensors, self._teacher_output),
                                    self._teacher_taps)

    def _convert(self, tensors: dict, declared: str) -> dict:
        if declared != "probabilities" or LOGITS not in tensors:
            return tensors
        families = {loss.output_family() for loss in self.distillation_losses} - {None}
        family = "bernoulli" if families == {"bernoulli"} else "categorical"
        tensors = dict(tensors)
        tensors[LOGITS] = _probabilities_to_logits(tensors[LOGITS], family)
        return tensors

    def _convert_student(self, tensors: dict) -> dict:
        return self._convert(tensors, self._student_output)

    def _path_values(self, loss: DistillationLoss, teacher: dict, student: dict, y,
                     training: bool = False):
        kwargs = {"training": training}
        if loss.needs_labels():
            if y is None:
                raise ValueError(
                    f"{type(loss).__name__} needs the labels: the dataset must yield (x, y)."
                )
            kwargs["labels"] = y
        value = loss(
            tuple(teacher[t] for t in loss.teacher_taps()),
            tuple(student[t] for t in loss.student_taps()),
            **kwargs,
        )
        return ops.cast(value, "float32")

    def _label_values(self, y, y_pred):
        batch = ops.shape(y_pred)[0]
        if y is None:
            if self._initial_student_loss_weight > 0:
                raise ValueError(
                    "The dataset yields no labels but student_loss_weight="
                    f"{self._initial_student_loss_weight} > 0. Yield (x, y) pairs, or set "
                    "student_loss_weight=0 to learn from the teacher alone."
                )
            return ops.zeros((batch,), "float32")
        if self.label_loss is None:
            return ops.zeros((batch,), "float32")
        return self.label_loss(y, y_pred)

    def compute_step(self, x, y, sample_weight, signals, training: bool) -> StepResult:
        """All terms of one batch: label loss, each distillation path, the total."""
        teacher = signals
        y_pred, student = self._student_features(x, training=training)
        student = self._convert_student(student)
        label_weight, path_weight = term_weights(sample_weight)
        label = weighted_mean(self._label_values(y, y_pred), label_weight)
        paths = [
            weighted_mean(self._path_values(loss, teacher, student, y, training), path_weight)
            for loss in self.distillation_losses
        ]
        path_vector = ops.stack(paths) if len(paths) > 1 else None
        if path_vector is None and isinstance(self.path_weighting, FixedWeighting):
            # One path: its weight times its value (no stack, no sum).
            distillation = self.path_weighting.weights_variable[0] * paths[0]
            path_vector = ops.expand_dims(paths[0], 0) if any(self._applied_focus or ()) else None
        else:
            path_vector = ops.stack(paths) if path_vector is None else path_vector
            distillation = self.path_weighting(path_vector)
        if self._applied_focus is not None and any(self._applied_focus):
            total = ops.sum(self.path_focus * path_vector)
        else:
            alpha = self.student_loss_weight
            total = alpha * label + (1.0 - alpha) * distillation
        logs = {"loss": total, "total_loss": total, "student_loss": label,
                "distillation_loss": distillation}
        if len(paths) > 1:
            logs.update({f"{key}_loss": p for key, p in zip(self._log_keys, paths)})
        gauges = {}
        if self.path_weighting.trainable_weights:
            weights = self.path_weighting.current_weights()
            gauges = {f"{key}_weight": weights[i] for i, key in enumerate(self._log_keys)}
        return StepResult(total, logs, y_pred, gauges)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self(x, training=False)

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict:
        weights = self.distillation_loss_weights
        if isinstance(weights, PathWeighting):
            weights = keras.saving.serialize_keras_object(weights)
        with self._configured_trainability():
            config = {
                "name": self.name,
                "teacher": keras.saving.serialize_keras_object(self.teacher),
                "student": keras.saving.serialize_keras_object(self.student),
                "distillation_losses": [
                    keras.saving.serialize_keras_object(loss)
                    for loss in self.distillation_losses
                ],
                "distillation_loss_weights": weights,
                "student_loss_weight": float(str(ops.convert_to_numpy(self.student_loss_weight))),
                "teacher_output": self._teacher_output,
                "student_output": self._student_output,
                "teacher_precision": self.teacher_precision,
            }
        if self.teacher_input_fn is not None:
            config["teacher_input_fn"] = keras.saving.serialize_keras_object(
                self.teacher_input_fn)
        return config

    @classmethod
    def from_config(cls, config: dict) -> Distiller:
        config = dict(config)
        for key in ("teacher", "student", "teacher_input_fn"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        config["distillation_losses"] = [
            keras.saving.deserialize_keras_object(c) for c in config["distillation_losses"]
        ]
        weights = config.get("distillation_loss_weights")
        if isinstance(weights, dict):
            config["distillation_loss_weights"] = keras.saving.deserialize_keras_object(weights)
        return cls(**config)


def _refuse_probabilities(role: str, values: np.ndarray) -> None:
    """Raises when a `(..., classes)` output read as logits looks like probabilities."""
    if values.ndim < 2 or values.shape[-1] < 2 or values.size == 0:
        return
    rows = values.reshape(-1, values.shape[-1]).astype(np.float64)
    if np.all(rows >= 0) and np.allclose(rows.sum(-1), 1.0, atol=1e-3):
        raise InputCheckError(
            f"The {role}'s outputs on the first batch are non-negative and sum to 1 in every "
            "row: they look like softmax probabilities, but they are read as logits (no "
            "softmax was found in the graph). Distilling them as logits would be wrong. "
            f"Return logits from the {role}, or pass {role}_output='probabilities' to the "
            f"Distiller (or {role}_output='logits' if these really are logits)."
        )


def _synthetic(spec, rng: np.random.Generator, batch: int = 4):
    """A batch of random values shaped like a `tf.data` element spec (unknown sizes -> 8)."""

    def make(s):
        if not isinstance(s, tf.TensorSpec):
            raise TypeError(f"unsupported element {s!r}")
        shape = [batch] + [d if d is not None else 8 for d in s.shape[1:]]
        if s.dtype.is_integer:
            return tf.constant(rng.integers(0, 2, size=shape), s.dtype)
        if s.dtype.is_bool:
            return tf.constant(rng.random(shape) > 0.5)
        return tf.constant(rng.normal(size=shape), s.dtype)

    return tf.nest.map_structure(make, spec)


def _peek(x, y, batch_size):
    """`(x to pass on, a batch to check)`, leaving the data as it was.

    Arrays give their first rows and generators their first element (put back). A
    `tf.data.Dataset` is not iterated (that would advance a reshuffling dataset's order and
    break seeded runs): the check runs on random inputs of its element spec, which is enough to
    see probabilities and identically-zero losses.
    """
    if isinstance(x, tf.data.Dataset):
        spec = x.element_spec
        try:
            return x, _synthetic(spec, np.random.default_rng(0))
        except (TypeError, ValueError):
            return x, None
    if isinstance(x, keras.utils.PyDataset):
        return x, (x[0] if len(x) else None)
    if isinstance(x, (np.ndarray, tf.Tensor)) or (
        isinstance(x, dict) and all(isinstance(v, (np.ndarray, tf.Tensor)) for v in x.values())
    ):
        n = int(batch_size or 32)
        head = tf.nest.map_structure(lambda a: a[:n], x)
        return x, ((head, y[:n]) if y is not None else (head,))
    if hasattr(x, "__next__"):  # a generator or iterator: put the first element back
        try:
            first = next(x)
        except StopIteration:
            return x, None

        def chained():
            yield from itertools.chain([first], x)

        return chained(), first
    return x, None
