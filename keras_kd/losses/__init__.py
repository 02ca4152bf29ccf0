"""Distillation losses: pure functions (`functional`) and one Keras class per method."""

from __future__ import annotations

from keras_kd.losses.attention_transfer import AttentionTransfer
from keras_kd.losses.base import LOGITS, DistillationLoss, Tap
from keras_kd.losses.fsp import FSPDistillation
from keras_kd.losses.functional import logit_mse, soft_target_cross_entropy, soft_target_kl
from keras_kd.losses.hint import HintDistillation
from keras_kd.losses.logit_matching import LogitMatchingDistillation
from keras_kd.losses.overhaul import OverhaulDistillation
from keras_kd.losses.relational import RelationalDistillation
from keras_kd.losses.soft_target import SoftTargetDistillation

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


def get(identifier: str | DistillationLoss) -> DistillationLoss:
    """Returns a loss instance from a registered name, or the instance itself.

    Raises:
        ValueError: for an unknown name, listing the valid names.
        TypeError: for anything that is neither a name nor a `DistillationLoss`.
    """
    if isinstance(identifier, DistillationLoss):
        return identifier
    if isinstance(identifier, str):
        if identifier not in REGISTRY:
            raise ValueError(
                f"Unknown distillation loss {identifier!r}. Valid names: {sorted(REGISTRY)}."
            )
        return REGISTRY[identifier]()
    raise TypeError(
        "distillation_losses entries must be keras_kd.losses.DistillationLoss instances or "
        f"registered names {sorted(REGISTRY)}; got {identifier!r} of type "
        f"{type(identifier).__name__}."
    )


__all__ = [
    "AttentionTransfer",
    "FSPDistillation",
    "HintDistillation",
    "OverhaulDistillation",
    "RelationalDistillation",
    "LOGITS",
    "REGISTRY",
    "DistillationLoss",
    "LogitMatchingDistillation",
    "SoftTargetDistillation",
    "Tap",
    "get",
    "register",
    "logit_mse",
    "soft_target_cross_entropy",
    "soft_target_kl",
]
