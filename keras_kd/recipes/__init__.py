"""Multi-run procedures built on the Distiller (scratch vs. distilled, ...)."""

from keras_kd.recipes._steps import RecipeResult
from keras_kd.recipes.born_again import born_again
from keras_kd.recipes.scratch_vs_distilled import (
    ScratchVsDistilledResult,
    SeedRun,
    scratch_vs_distilled,
)
from keras_kd.recipes.teacher_assistant import teacher_assistant_chain

__all__ = [
    "RecipeResult",
    "ScratchVsDistilledResult",
    "SeedRun",
    "born_again",
    "scratch_vs_distilled",
    "teacher_assistant_chain",
]
