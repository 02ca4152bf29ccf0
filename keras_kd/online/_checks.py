"""Checks shared by the online models: refused before any training, with what to do."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import keras

from keras_kd.features import (  # noqa: F401 - the shape helpers are used as _checks.*
    is_graph_model,
    output_info,
    shared_variables,
    static_input_shape,
    static_output_shape,
)
from keras_kd.objective import LabelLoss


def check_model(name: str, value, owner: str) -> keras.Model:
    """`value` if it is a `keras.Model`, else a `TypeError` naming the argument."""
    if not isinstance(value, keras.Model):
        raise TypeError(f"{name} must be a keras.Model, got {type(value)!r}. {owner} trains "
                        "Keras models: pass e.g. a keras.Model(inputs, logits).")
    return value


def check_model_list(name: str, values, minimum: int, owner: str, hint: str) -> list:
    """A list of at least `minimum` distinct `keras.Model`s, checked one by one."""
    if isinstance(values, keras.Model) or not isinstance(values, Sequence) or isinstance(
            values, (str, bytes)):
        raise TypeError(f"{name} must be a list of at least {minimum} keras.Models, got "
                        f"{type(values)!r}. {hint}")
    models = [check_model(f"{name}[{i}]", m, owner) for i, m in enumerate(values)]
    if len(models) < minimum:
        raise ValueError(f"{name} must list at least {minimum} keras.Models, got {len(models)}. "
                         f"{hint}")
    for i, model in enumerate(models):
        for j in range(i):
            if models[j] is model:
                raise ValueError(f"{name}[{j}] and {name}[{i}] are the same model object "
                                 f"'{model.name}'. Pass a new instance for each.")
    return models


def check_single_output(name: str, model: keras.Model) -> None:
    """Refuses a graph model with several outputs (each model here predicts one tensor)."""
    if is_graph_model(model) and len(model.outputs) != 1:
        raise ValueError(f"{name} ('{model.name}') has {len(model.outputs)} outputs; it must "
                         "output one tensor of logits. Build it as keras.Model(inputs, logits).")


def check_logits(name: str, model: keras.Model, owner: str) -> None:
    """Refuses a model whose graph ends in a softmax or sigmoid: logits are compared."""
    check_single_output(name, model)
    info = output_info(model, name)
    if info.activation in ("softmax", "sigmoid"):
        raise ValueError(
            f"{name} ('{model.name}') ends in a {info.activation}, but {owner} reads every "
            "output as logits (its soft targets are softmax(logits / T)). Remove the final "
            "activation (e.g. keras.layers.Dense(10) instead of Dense(10, activation="
            "'softmax')) and compile with loss=keras.losses.SparseCategoricalCrossentropy("
            "from_logits=True)."
        )


def check_same_shapes(names: Sequence[str], shapes: Sequence[tuple | None], what: str,
                      hint: str) -> None:
    """Refuses static shapes that differ (unknown shapes, `None`, are skipped)."""
    known = [(n, s) for n, s in zip(names, shapes) if s is not None]
    for n, s in known[1:]:
        if _differ(s, known[0][1]):
            raise ValueError(f"{n} has {what} {s} but {known[0][0]} has {known[0][1]}; {hint}")


def _differ(a: tuple, b: tuple) -> bool:
    if len(a) != len(b):
        return True
    return any(x is not None and y is not None and x != y for x, y in zip(a, b))


def check_traced_shapes(names: Sequence[str], tensors: Sequence, hint: str) -> None:
    """The same check on the tensors of the first traced step (subclassed models)."""
    check_same_shapes(names, [tuple(t.shape[1:]) for t in tensors], "output shape", hint)


def check_label_loss(label_loss: LabelLoss | None, owner: str, models, roles) -> None:
    """Every online objective has label terms: refuses no loss or a non-categorical one."""
    if label_loss is None:
        raise ValueError(
            f"{owner} needs a label loss: compile(loss=keras.losses."
            "SparseCategoricalCrossentropy(from_logits=True)) (or 'categorical_crossentropy' "
            "with from_logits=True for one-hot labels)."
        )
    if label_loss.kind in ("bernoulli", "regression"):
        raise ValueError(
            f"compile(loss={label_loss.config!r}) is a {label_loss.kind} loss, but {owner} "
            "compares softmax distributions over classes. Compile with loss=keras.losses."
            "SparseCategoricalCrossentropy(from_logits=True)."
        )
    if label_loss.reads_probabilities:
        names = ", ".join(f"{role} '{m.name}'" for m, role in zip(models, roles))
        warnings.warn(
            f"compile(loss={label_loss.config!r}) reads the predictions as probabilities "
            f"(from_logits=False), but {owner} gives it logits ({names}): the label loss would "
            "be wrong. Pass loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True).",
            stacklevel=4,
        )


def label_values(label_loss: LabelLoss | None, y, logits, owner: str):
    """Unreduced label-loss values; refuses batches without labels."""
    if y is None:
        raise ValueError(f"{owner} needs labels: the dataset must yield (x, y) or "
                         "(x, y, sample_weight).")
    if label_loss is None:
        raise ValueError(f"{owner} was not compiled with a label loss: call compile(loss="
                         "keras.losses.SparseCategoricalCrossentropy(from_logits=True)).")
    return label_loss(y, logits)
