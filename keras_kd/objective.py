"""The step machinery every keras_kd training model shares.

A training step has two parts. The *forward passes* are what makes each way of training
different: a frozen teacher and a student (`Distiller`), a cohort of peers (`online.
MutualLearning`), a booster and a light net sharing layers (`online.RocketLaunching`), ...
Everything else is the same for all of them and lives here, once:

- loss terms are computed per example (or per position) in float32 and reduced like Keras
  losses with `sample_weight` / `class_weight`: `mean(w * l)` over every element, i.e.
  `sum(w * l) / batch_size` for per-example values and Keras's temporal convention
  `sum(w * l) / (batch * steps)` for per-position values with a `(batch, steps)` weight
  (`weighted_mean`);
- the compiled label loss becomes unreduced per-example values with its labels checked
  (`LabelLoss`);
- under `tf.distribute` the per-replica loss is divided by the number of replicas (Keras's own
  trainer does the same), then `optimizer.scale_loss` is applied;
- batch-weighted epoch means of every logged key in one pair of variables (`LoggedMeans`),
  plus the compiled metrics of one prediction or of several named predictions
  (`peer0_accuracy`, ...);
- `fit` / `evaluate` run one traced function per batch that reads the batch, runs the step and
  returns the logs (`make_train_function`), without Keras's per-step `tf.experimental.Optional`
  round trip.

`TrainingModel` holds that `train_step` / `test_step`; a subclass only implements
`compute_step` (and, if it has a frozen model to run outside the gradient tape, `signals`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf
from keras import ops

_SPARSE_LOSS_NAMES = ("sparse_categorical_crossentropy", "SparseCategoricalCrossentropy")
_DENSE_LOSS_NAMES = (
    "categorical_crossentropy",
    "CategoricalCrossentropy",
    "kl_divergence",
    "KLDivergence",
    "categorical_focal_crossentropy",
    "CategoricalFocalCrossentropy",
)
_BINARY_LOSS_NAMES = (
    "binary_crossentropy",
    "BinaryCrossentropy",
    "binary_focal_crossentropy",
    "BinaryFocalCrossentropy",
)
_REGRESSION_LOSS_NAMES = (
    "mean_squared_error",
    "MeanSquaredError",
    "mse",
    "mean_absolute_error",
    "MeanAbsoluteError",
    "mae",
    "huber",
    "Huber",
    "log_cosh",
    "LogCosh",
)
_PROBABILITY_CE_NAMES = _SPARSE_LOSS_NAMES + (
    "categorical_crossentropy",
    "CategoricalCrossentropy",
    "categorical_focal_crossentropy",
    "CategoricalFocalCrossentropy",
) + _BINARY_LOSS_NAMES


def num_replicas() -> int:
    """Replicas of the current `tf.distribute` strategy (1 outside any strategy)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def is_multi_worker(strategy) -> bool:
    """Whether `strategy` is a `MultiWorkerMirroredStrategy` spanning more than one worker."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
        strategy.num_replicas_in_sync > len(strategy.extended.worker_devices))


def weighted_mean(values, sample_weight=None):
    """Keras's `sum_over_batch_size` reduction: `mean(w * l)` over every element of `values`.

    Args:
        values: `(batch,)` per-example or `(batch, steps, ...)` per-position float32 losses.
        sample_weight: `None`, `(batch,)` (or `(batch, 1)`) per-example weights, or weights
            shaped like the leading axes of `values` (e.g. a `(batch, steps)` padding mask).
            Per-example `values` with per-position weights take each example's mean weight.

    Returns:
        A float32 scalar: `sum(w * l) / values.size`, which is `sum_b w_b l_b / batch` for
        per-example values and `sum_{b,t} w_bt l_bt / (batch * steps)` for per-position values,
        exactly as a Keras loss reduces them.
    """
    values = ops.cast(values, "float32")
    if sample_weight is None:
        return ops.mean(values)
    if isinstance(sample_weight, Mapping):
        raise ValueError(
            f"Per-term sample weights {sorted(sample_weight)} reached a single loss term: split "
            "them with keras_kd.objective.term_weights first (the Distiller does), or pass "
            "one weight per example."
        )
    weight = ops.cast(sample_weight, "float32")
    v_rank, w_rank = len(values.shape), len(weight.shape)
    if w_rank == v_rank + 1 and weight.shape[-1] == 1:
        weight = ops.squeeze(weight, axis=-1)
        w_rank -= 1
    if w_rank > v_rank:
        weight = ops.mean(weight, axis=tuple(range(v_rank, w_rank)))
        w_rank = v_rank
    while w_rank < v_rank:
        weight = ops.expand_dims(weight, -1)
        w_rank += 1
    return ops.mean(values * weight)


TERM_WEIGHT_KEYS = ("label", "distillation")


def term_weights(sample_weight):
    """`(label weights, distillation weights)`: one weight for every term, or one per term.

    Args:
        sample_weight: `None`, one per-example weight for every term, or a dict with keys
            among `"label"` (the label loss, and the compiled metrics) and `"distillation"`
            (every distillation term); a missing key weighs that term by 1. E.g. a labelled set
            joined with an unlabelled one gives `{"label": is_labelled}`: the label loss sees
            the labelled examples only, the distillation loss all of them.

    Returns:
        The two weights, each `None` or what `weighted_mean` takes.

    Raises:
        ValueError: for a dict with other keys.

    Example:
        >>> label_w, distill_w = term_weights({"label": mask})
    """
    if not isinstance(sample_weight, Mapping):
        return sample_weight, sample_weight
    unknown = sorted(set(sample_weight) - set(TERM_WEIGHT_KEYS))
    if unknown:
        raise ValueError(
            f"sample_weight keys must be among {TERM_WEIGHT_KEYS}, got {unknown}: key the "
            "label loss's weights 'label' and the distillation terms' 'distillation'."
        )
    return sample_weight.get("label"), sample_weight.get("distillation")


def loss_name(loss) -> str:
    """The class name of a `keras.losses.Loss`, or the `__name__` of a loss function."""
    if isinstance(loss, keras.losses.Loss):
        return type(loss).__name__
    return getattr(loss, "__name__", type(loss).__name__)


def label_kind(loss) -> str | None:
    """What a compiled loss says about the outputs: "categorical", "bernoulli", "regression"."""
    name = loss_name(loss)
    if name in _SPARSE_LOSS_NAMES or name in _DENSE_LOSS_NAMES:
        return "categorical"
    if name in _BINARY_LOSS_NAMES:
        return "bernoulli"
    if name in _REGRESSION_LOSS_NAMES:
        return "regression"
    return None


def reads_probabilities(loss) -> bool:
    """True for a cross-entropy that expects probabilities (`from_logits=False`)."""
    if loss_name(loss) not in _PROBABILITY_CE_NAMES:
        return False
    if isinstance(loss, keras.losses.Loss):
        return not loss.get_config().get("from_logits", False)
    return True  # the string / function forms default to from_logits=False


class LabelLoss:
    """The compiled label loss, as unreduced float32 values with its labels checked.

    Args:
        loss: anything `keras.losses.get` accepts (a `Loss`, a name, a function).

    Calling it with `(y, y_pred)` returns the loss per example (or per position for sequence
    outputs), before any reduction, so `weighted_mean` applies the sample weights.
    """

    def __init__(self, loss):
        self.config = loss
        self.fn = keras.losses.get(loss)
        if self.fn is None or not callable(self.fn):
            raise ValueError(
                f"compile(loss=...) got {loss!r}, which is not a Keras loss: pass e.g. "
                "keras.losses.SparseCategoricalCrossentropy(from_logits=True)."
            )
        self.name = loss_name(self.fn)
        self.kind = label_kind(self.fn)
        self.reads_probabilities = reads_probabilities(self.fn)

    def check_labels(self, y, y_pred) -> None:
        """Refuses labels whose shape cannot match the compiled loss, before any update."""
        y_shape, p_shape = tuple(y.shape), tuple(y_pred.shape)
        if self.name in _SPARSE_LOSS_NAMES:
            ok = len(y_shape) == len(p_shape) - 1 or (
                len(y_shape) == len(p_shape) and y_shape[-1] == 1
            )
            if not ok:
                raise ValueError(
                    f"Labels of shape {y_shape} do not fit the compiled loss '{self.name}', "
                    f"which expects integer class ids of shape {p_shape[:-1]} for predictions "
                    f"of shape {p_shape}. For one-hot labels compile with "
                    "'categorical_crossentropy'."
                )
        elif self.name in _DENSE_LOSS_NAMES:
            if len(y_shape) != len(p_shape) or y_shape[-1] != p_shape[-1]:
                raise ValueError(
                    f"Labels of shape {y_shape} do not fit the compiled loss '{self.name}', "
                    f"which expects one-hot labels shaped like the predictions {p_shape}. For "
                    "integer class ids compile with 'sparse_categorical_crossentropy'."
                )

    def __call__(self, y, y_pred):
        self.check_labels(y, y_pred)
        y_pred = ops.cast(y_pred, "float32")
        fn = self.fn
        values = fn.call(y, y_pred) if isinstance(fn, keras.losses.Loss) else fn(y, y_pred)
        values = ops.cast(values, "float32")
        if len(values.shape) == 0:
            raise ValueError(
                f"The compiled loss '{self.name}' returned a scalar; keras_kd needs one value "
                "per example to apply sample weights. Pass a keras.losses.Loss or a loss "
                "function that returns per-example values."
            )
        return values


def warn_if_probability_loss_on_logits(label_loss: LabelLoss, model: keras.Model, role: str,
                                       outputs_logits: bool) -> None:
    """Warns when a `from_logits=False` cross-entropy is compiled for a logits model."""
    if outputs_logits and label_loss.reads_probabilities:
        try:
            last = f" (its last layer '{model.outputs[0]._keras_history.operation.name}' has no "
            last += "activation)"
        except (AttributeError, ValueError, IndexError, TypeError):
            last = ""
        warnings.warn(
            f"compile(loss={label_loss.config!r}) reads the {role} '{model.name}''s outputs as "
            f"probabilities (from_logits=False), but that model outputs logits{last}: the label "
            "loss would be wrong. Pass e.g. loss=keras.losses.SparseCategoricalCrossentropy("
            "from_logits=True), or end the model in keras.layers.Softmax().",
            stacklevel=3,
        )


class LoggedMeans(keras.metrics.Metric):
    """Batch-size-weighted epoch means of several logged scalars, in one pair of variables.

    One `update_state(values, batch)` adds `values * batch` to a `(k,)` total and `batch` to a
    count: two assignments per step whatever the number of logged keys (a `keras.metrics.Mean`
    per key costs two each). `views()` gives one lightweight metric per key, named after it,
    so the logs keep Keras's order and names. Under `tf.distribute` both variables are summed
    over replicas, as a `Mean`'s are.
    """

    def __init__(self, keys: Sequence[str], name: str = "logged_means", **kwargs):
        super().__init__(name=name, **kwargs)
        self.keys = tuple(keys)
        self.totals = self.add_variable(shape=(len(self.keys),), initializer="zeros",
                                        dtype="float32", name="totals")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="float32",
                                       name="count")

    def update_state(self, values, sample_weight=1.0):
        weight = ops.cast(sample_weight, "float32")
        self.totals.assign_add(ops.cast(values, "float32") * weight)
        self.count.assign_add(weight)

    def result(self):
        return {}  # reported through the views

    def means(self):
        return ops.divide_no_nan(self.totals, self.count)

    def reset_state(self):
        self.totals.assign(ops.zeros_like(self.totals))
        self.count.assign(ops.zeros_like(self.count))

    def views(self) -> list[keras.metrics.Metric]:
        return [_LoggedMeanView(self, i, key) for i, key in enumerate(self.keys)]


class _LoggedMeanView(keras.metrics.Metric):
    """The mean of one key of a `LoggedMeans` (no state of its own)."""

    def __init__(self, owner: LoggedMeans, index: int, name: str):
        super().__init__(name=name)
        object.__setattr__(self, "_owner", owner)  # not tracked: the owner holds the state
        self._index = index

    def update_state(self, *args, **kwargs):
        return None

    def result(self):
        return self._owner.means()[self._index]

    def reset_state(self):
        return None


@dataclasses.dataclass
class StepResult:
    """What one step's forward passes produce.

    Attributes:
        loss: the scalar to minimise, already reduced with `weighted_mean`.
        logs: reduced scalars keyed by their log name (`"loss"`, `"student_loss"`, ...); each
            is tracked by a `Mean` weighted by the batch size.
        predictions: what the compiled metrics see: one tensor, or a dict keyed by the names
            in `TrainingModel.prediction_names` (metrics are then logged as
            `<name>_<metric>`).
        gauges: values logged as they are at each step (e.g. learned loss weights); optional.
        labels: labels for the compiled metrics when the batch has none of its own (e.g. the
            teacher's classes of generated inputs); `None` uses the batch's labels.
    """

    loss: Any
    logs: Mapping[str, Any]
    predictions: Any
    gauges: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    labels: Any = None


class TrainingModel(keras.Model):
    """Base of every keras_kd training model: one `train_step` / `test_step` for all of them.

    Subclasses call `self.track(names, gauge_names)` in `__init__` with every key they log and
    implement `compute_step(x, y, sample_weight, signals, training) -> StepResult`. Models
    with several named predictions set `prediction_names`; `compile(metrics=[...])` then gives
    every prediction its own copy of the metrics. `signals(x)` runs what must stay outside the
    gradient tape (a frozen teacher) and may change the inputs (cached batches).

    `compile(loss=...)` is the label loss; it is available to `compute_step` as
    `self.label_loss` (a `LabelLoss`, or `None` when no loss was given).
    """

    prediction_names: Sequence[str] | None = None

    def track(self, names: Sequence[str], gauge_names: Sequence[str] = ()) -> None:
        """Declares every logged key (batch-weighted epoch means, `LoggedMeans`) and every
        gauge (a `Mean` of the per-step values, e.g. learned loss weights)."""
        if len(set(names) | set(gauge_names)) != len(names) + len(gauge_names):
            raise ValueError(f"Logged keys must be distinct, got {list(names)} and "
                             f"{list(gauge_names)}.")
        self._logged_keys_order = tuple(names)
        self.step_means = LoggedMeans(names)
        self.gauge_trackers = [keras.metrics.Mean(name=name) for name in gauge_names]
        self._step_views = self.step_means.views()
        self.label_loss = None
        self._label_loss_config = None
        self._metrics_config = None

    # ------------------------------------------------------------------ frozen models
    def frozen_models(self) -> list:
        """Models this model uses but never trains (a teacher). Their variables are left out of
        `trainable_variables` whatever their `trainable` flag, so the user's objects are never
        changed. Default: none."""
        return []

    def _not_frozen(self, variables) -> list:
        frozen = {id(v) for model in self.frozen_models() if model is not None
                  for v in model.weights}
        return [v for v in variables if id(v) not in frozen] if frozen else list(variables)

    @property
    def trainable_weights(self):
        return self._not_frozen(super().trainable_weights)

    @property
    def trainable_variables(self):
        return self._not_frozen(super().trainable_variables)

    @property
    def non_trainable_weights(self):
        trainable = {id(v) for v in self.trainable_weights}
        return [v for v in self.weights if id(v) not in trainable]

    @property
    def non_trainable_variables(self):
        trainable = {id(v) for v in self.trainable_variables}
        return [v for v in self.variables if id(v) not in trainable]

    # ------------------------------------------------------------------ compile / metrics
    def compile(self, optimizer="adam", loss=None, metrics=None,
                jit_compile: bool | str = False, **kwargs):
        """Configures training; `loss` is the label loss, `metrics` those of the predictions.

        Args:
            optimizer: the optimizer of every trainable variable.
            loss: the label loss (e.g. `keras.losses.SparseCategoricalCrossentropy(
                from_logits=True)`), or `None` when the objective needs no labels.
            metrics: metrics of the predictions (a list; with several named predictions each
                gets its own copy, logged as `<name>_<metric>`), or a dict keyed by
                prediction name.
            jit_compile: `False` by default: XLA made these steps slower on the CPUs measured
                (BENCHMARKS.md). Pass `True` or `"auto"` to opt in.
            **kwargs: passed to `keras.Model.compile` (`steps_per_execution`, ...).
        """
        self.label_loss = LabelLoss(loss) if loss is not None else None
        self._label_loss_config = loss
        self.check_compile(self.label_loss)
        if self.prediction_names and metrics is not None and not isinstance(metrics, dict):
            metrics = {name: list(metrics) for name in self.prediction_names}
        self._metrics_config = metrics
        super().compile(
            optimizer=optimizer, loss=None, metrics=metrics, jit_compile=jit_compile, **kwargs
        )

    def check_compile(self, label_loss: LabelLoss | None) -> None:
        """Refuses a label loss the model cannot use (subclasses override)."""

    def get_compile_config(self) -> dict:
        if not self.compiled:
            return {}
        return {
            "optimizer": keras.saving.serialize_keras_object(self.optimizer),
            "loss": keras.saving.serialize_keras_object(self._label_loss_config),
            "metrics": keras.saving.serialize_keras_object(self._metrics_config),
        }

    def compile_from_config(self, config: dict) -> None:
        config = keras.saving.deserialize_keras_object(config)
        metrics = config.get("metrics")
        if self.prediction_names and isinstance(metrics, dict):
            # compile() expands a list per prediction; give it back the list form.
            first = metrics.get(self.prediction_names[0])
            if all(metrics.get(n) == first for n in self.prediction_names):
                config["metrics"] = first
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        metrics = [self.step_means, *self._step_views, *self.gauge_trackers]
        if self.compiled and self._compile_metrics is not None:
            metrics.append(self._compile_metrics)
        return metrics

    def get_metrics_result(self):
        """Keras's `get_metrics_result`, with every logged mean from one division."""
        means = ops.unstack(self.step_means.means(), num=len(self._logged_keys_order))
        results = dict(zip(self._logged_keys_order, means))
        views = {id(view) for view in self._step_views}
        for metric in self.metrics:
            if metric is self.step_means or id(metric) in views:
                continue
            result = metric.result()
            if isinstance(result, dict):
                results.update(result)
            else:
                results[metric.name] = result
        return results

    # ------------------------------------------------------------------ the step
    def signals(self, x):
        """Runs what stays outside the gradient tape; returns `(model inputs, signals)`."""
        return x, None

    def compute_step(self, x, y, sample_weight, signals, training: bool) -> StepResult:
        raise NotImplementedError(f"{type(self).__name__} must implement compute_step().")

    def step_variables(self) -> list:
        """The variables the optimizer updates this step (default: all trainable ones)."""
        return self.trainable_variables

    def optimizer_groups(self) -> list[tuple]:
        """`(optimizer, variables)` pairs, each updated from the step's loss.

        Default: the compiled optimizer on `step_variables()`. A model that trains two parts
        with their own optimizers (DAFL's generator and student) returns two pairs; its loss
        must then reach each part only through the terms meant for it (`stop_gradient`).
        """
        return [(self.optimizer, self.step_variables())]

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, signals = self.signals(x)
        groups = self.optimizer_groups()
        with tf.GradientTape(persistent=len(groups) > 1) as tape:
            result = self.compute_step(x, y, sample_weight, signals, training=True)
            # Per-replica share of the global mean: the replicas' gradients are summed.
            replicas = num_replicas()
            share = result.loss / replicas if replicas > 1 else result.loss
            losses = [optimizer.scale_loss(share) for optimizer, _ in groups]
        for (optimizer, variables), loss in zip(groups, losses):
            if not optimizer.built:  # one group: for every variable, so stages may switch
                optimizer.build(self.trainable_variables if len(groups) == 1 else variables)
            gradients = tape.gradient(loss, variables)
            optimizer.apply_gradients(zip(gradients, variables))
        del tape
        return self._record(x, y, sample_weight, result)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, signals = self.signals(x)
        result = self.compute_step(x, y, sample_weight, signals, training=False)
        return self._record(x, y, sample_weight, result)

    # Keras 3.15's fit/evaluate fail under a multi-worker MultiWorkerMirroredStrategy for any
    # model (keras-team/keras#20585), twice: (1) `_maybe_symbolic_build` averages the first
    # batch, a nest of per-replica values, with `strategy.reduce`, which that strategy cannot
    # do for a nest; (2) the step function averages the step's scalar logs with
    # `strategy.reduce("MEAN", v, axis=0)`, which fails on 0-d tensors. The build needs only
    # shapes and dtypes, so it is given this worker's first local batch; the logs leave the
    # step with a leading axis of 1, which that reduction removes again.
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self.distribute_strategy
        if iterator is not None and is_multi_worker(strategy):
            if self.steps_per_execution != 1:
                raise ValueError(
                    f"compile(steps_per_execution={self.steps_per_execution}) fails under a "
                    "multi-worker MultiWorkerMirroredStrategy in Keras 3.15 (its multi-step "
                    "loop feeds no value to a collective's placeholder). Compile with "
                    "steps_per_execution=1.")
            for _, _, batches in iterator:
                local = tf.nest.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0], next(batches))
                return super()._maybe_symbolic_build(data_batch=local)
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    # ------------------------------------------------------------------ step functions
    # Keras 3's TensorFlow trainer wraps every step's logs in a `tf.experimental.Optional` so
    # that the end of the data needs no exception, then asks it `has_value()` and
    # `get_value()`: two more eager operations per step, the second growing with the number
    # of logs (about 15 us per logged key on the CPUs measured, BENCHMARKS.md). That was most
    # of the Distiller's fixed cost over the student's own step on a small model. For the
    # common case (one step per call on a `tf.data` iterator, no multi-worker or TPU strategy,
    # not run eagerly) the step function below reads the batch with `get_next()` inside the
    # traced function and returns the logs directly; the end of the data surfaces as
    # `tf.errors.OutOfRangeError`, which Keras's epoch iterator turns into the end of the
    # epoch, exactly as for its own functions. Every other case keeps Keras's function.
    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        super().make_train_function(force=True)
        self.train_function = self._direct_function(self.train_function, self.train_step)
        return self.train_function

    def make_test_function(self, force=False):
        if self.test_function is not None and not force:
            return self.test_function
        super().make_test_function(force=True)
        self.test_function = self._direct_function(self.test_function, self.test_step)
        return self.test_function

    def _direct_function(self, keras_function, step):
        strategy = self.distribute_strategy
        if (self.run_eagerly or self.steps_per_execution != 1 or is_multi_worker(strategy)
                or isinstance(strategy, tf.distribute.TPUStrategy)):
            return keras_function

        def replica_step(data):
            # Every operation of the step waits for the batch: at the end of the data
            # `get_next()` fails, and nothing (not even the optimizer's step counter) may
            # have run before it.
            tensors = [t for t in tf.nest.flatten(data, expand_composites=True)
                       if isinstance(t, tf.Tensor)]
            with tf.control_dependencies(tensors):
                return step(data)

        def one_step(data):
            data = tf.nest.map_structure(
                lambda v: None if isinstance(v, tf.experimental.Optional) else v, data)
            outputs = strategy.run(replica_step, args=(data,))
            return tf.nest.map_structure(
                lambda v: tf.reduce_mean(strategy.experimental_local_results(v), axis=0)
                if isinstance(v, tf.distribute.DistributedValues) else v, outputs)

        if self.jit_compile:  # as Keras: the step compiled, the iterator outside
            one_step = tf.function(one_step, reduce_retracing=True, jit_compile=True)

        @tf.function(reduce_retracing=True)
        def one_step_on_iterator(iterator):
            return one_step(iterator.get_next())

        def function(iterator):
            if isinstance(iterator, (tf.data.Iterator, tf.distribute.DistributedIterator)):
                return one_step_on_iterator(iterator)
            return keras_function(iterator)  # e.g. train_on_batch's one-batch generator

        return function

    def _record(self, x, y, sample_weight, result: StepResult):
        predictions = result.predictions
        first = predictions
        if isinstance(predictions, Mapping):
            first = next(iter(predictions.values()))
        batch = ops.shape(first)[0]
        logs = result.logs
        if set(logs) != set(self._logged_keys_order):
            raise ValueError(f"compute_step logged {sorted(logs)} but track() declared "
                             f"{sorted(self._logged_keys_order)}.")
        values = ops.stack([ops.cast(logs[key], "float32") for key in self._logged_keys_order])
        self.step_means.update_state(values, sample_weight=batch)
        gauges = {t.name: t for t in self.gauge_trackers}
        for name, value in result.gauges.items():
            gauges[name].update_state(value)
        if result.labels is not None:
            y = result.labels
        logs = self.compute_metrics(x, y, predictions, sample_weight=sample_weight)
        if is_multi_worker(tf.distribute.get_strategy()):
            logs = {name: ops.expand_dims(value, 0) for name, value in logs.items()}
        return logs

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Keras's `compute_metrics`; one label tensor serves every named prediction.

        Also reached from Keras's symbolic build (e.g. under `tf.distribute`), which builds
        the compiled metrics before the first step: the labels are repeated per prediction
        there too, so every `<name>_<metric>` is created.
        """
        if isinstance(y_pred, Mapping) and y is not None and not isinstance(y, Mapping):
            y = {name: y for name in y_pred}
        if isinstance(sample_weight, Mapping):  # per-term weights: metrics follow the labels'
            sample_weight = term_weights(sample_weight)[0]
        return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)
