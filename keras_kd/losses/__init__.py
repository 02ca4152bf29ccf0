"""Distillation losses: pure functions (`functional`) and one Keras class per method."""

from __future__ import annotations

from keras_kd.losses.attention_transfer import AttentionTransfer
from keras_kd.losses.base import LOGITS, DistillationLoss, Tap
from keras_kd.losses.binary_soft_target import BinarySoftTargetDistillation
from keras_kd.losses.decoupled_kd import DecoupledKD
from keras_kd.losses.dist import DISTDistillation
from keras_kd.losses.fsp import FSPDistillation
from keras_kd.losses.functional import (
    bernoulli_soft_target_kl,
    decoupled_kd,
    dist_kd,
    logit_mse,
    output_mse,
    soft_target_cross_entropy,
    soft_target_kl,
    standardize_logits,
)
from keras_kd.losses.hint import HintDistillation
from keras_kd.losses.keras_compat import FeatureDistillation, LogitsDistillation
from keras_kd.losses.logit_matching import LogitMatchingDistillation
from keras_kd.losses.output_matching import OutputMatchingDistillation
from keras_kd.losses.overhaul import OverhaulDistillation
from keras_kd.losses.relational import RelationalDistillation
from keras_kd.losses.soft_target import SoftTargetDistillation
from keras_kd.losses.top_k_soft_target import TopKSoftTargetDistillation

# The one registry of string names (`"soft_target"` -> class), filled explicitly below.
REGISTRY: dict[str, type] = {}


def register(name: str, cls: type) -> type:
    """Adds `cls` under `name`; a name already taken raises `ValueError`."""
    if name in REGISTRY:
        raise ValueError(f"Distillation loss name {name!r} is already registered to "
                         f"{REGISTRY[name].__name__}.")
    if not (isinstance(cls, type) and issubclass(cls, DistillationLoss)):
        raise TypeError(f"register() expects a DistillationLoss subclass, got {cls!r}.")
    REGISTRY[name] = cls
    return cls


register("soft_target", SoftTargetDistillation)
register("logit_matching", LogitMatchingDistillation)
register("hint", HintDistillation)
register("attention_transfer", AttentionTransfer)
register("fsp", FSPDistillation)
register("relational", RelationalDistillation)
register("overhaul", OverhaulDistillation)
register("binary_soft_target", BinarySoftTargetDistillation)
register("output_matching", OutputMatchingDistillation)
register("dkd", DecoupledKD)
register("dist", DISTDistillation)
register("top_k_soft_target", TopKSoftTargetDistillation)


def _required_arguments(cls: type) -> list[str]:
    """The constructor parameters of `cls` that have no default, read from its signature."""
    import inspect

    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]  # drop self
    named = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
             inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters if p.kind in named and p.default is p.empty]


def _public_path(cls: type) -> str:
    if globals().get(cls.__name__) is cls:
        return f"keras_kd.losses.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def get(identifier: str | DistillationLoss) -> DistillationLoss:
    """Returns a loss instance from a registered name, or the instance itself.

    A name builds its class with the default arguments. Classes whose constructor has
    arguments without a default (the layers a feature loss compares, ...) cannot be built from
    a name: `get` refuses them and names the arguments and the class to construct.

    Raises:
        ValueError: for an unknown name, listing the valid names, or a name whose class needs
            arguments, e.g. "'hint' needs teacher_layer and student_layer: pass
            keras_kd.losses.HintDistillation(teacher_layer=..., student_layer=...)."
        TypeError: for anything that is neither a name nor a `DistillationLoss`.
    """
    if isinstance(identifier, DistillationLoss):
        return identifier
    if isinstance(identifier, str):
        if identifier not in REGISTRY:
            raise ValueError(
                f"Unknown distillation loss {identifier!r}. Valid names: {sorted(REGISTRY)}."
            )
        cls = REGISTRY[identifier]
        required = _required_arguments(cls)
        if required:
            names = " and ".join([", ".join(required[:-1]), required[-1]] if required[:-1]
                                 else required)
            arguments = ", ".join(f"{name}=..." for name in required)
            raise ValueError(
                f"{identifier!r} needs {names}: pass {_public_path(cls)}({arguments})."
            )
        return cls()
    raise TypeError(
        "distillation_losses entries must be keras_kd.losses.DistillationLoss instances or "
        f"registered names {sorted(REGISTRY)}; got {identifier!r} of type "
        f"{type(identifier).__name__}."
    )


__all__ = [
    "AttentionTransfer",
    "BinarySoftTargetDistillation",
    "DISTDistillation",
    "DecoupledKD",
    "OutputMatchingDistillation",
    "bernoulli_soft_target_kl",
    "decoupled_kd",
    "dist_kd",
    "output_mse",
    "standardize_logits",
    "FSPDistillation",
    "FeatureDistillation",
    "LogitsDistillation",
    "HintDistillation",
    "OverhaulDistillation",
    "RelationalDistillation",
    "LOGITS",
    "REGISTRY",
    "DistillationLoss",
    "LogitMatchingDistillation",
    "SoftTargetDistillation",
    "TopKSoftTargetDistillation",
    "Tap",
    "get",
    "register",
    "logit_mse",
    "soft_target_cross_entropy",
    "soft_target_kl",
]
