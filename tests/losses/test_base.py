"""DistillationLoss: taps are declared by `teacher_taps()` / `student_taps()`."""

from __future__ import annotations

import pytest

from keras_kd.losses import DistillationLoss, Tap


def test_the_pre_rename_tap_methods_are_refused_when_the_class_is_defined():
    with pytest.raises(TypeError, match=r"teacher_features\(\) is now called teacher_taps\(\)"):

        class _Old(DistillationLoss):
            def teacher_features(self):
                return (Tap("hidden"),)

    class _New(DistillationLoss):
        def student_taps(self):
            return (Tap("hidden"),)

    assert _New().student_taps() == (Tap("hidden"),)
