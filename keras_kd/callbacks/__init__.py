"""Callbacks that change Distiller variables between steps."""

from keras_kd.callbacks.dkd_warmup import DKDWarmup
from keras_kd.callbacks.hint_stage import HintStage
from keras_kd.callbacks.loss_weight_scheduler import LossWeightScheduler
from keras_kd.callbacks.temperature_scheduler import TemperatureScheduler

__all__ = ["DKDWarmup", "HintStage", "LossWeightScheduler", "TemperatureScheduler"]
