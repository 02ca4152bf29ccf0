"""`keras_kd.losses.get(name)`: every registered name builds, or is refused with what to pass."""

from __future__ import annotations

import inspect

import pytest

from keras_kd import losses


def _required(cls) -> list[str]:
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return [p.name for p in parameters
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


@pytest.mark.parametrize("name", sorted(losses.REGISTRY))
def test_every_registered_name_builds_or_says_what_to_pass(name):
    cls = losses.REGISTRY[name]
    required = _required(cls)
    if not required:
        loss = losses.get(name)
        assert type(loss) is cls
        return
    with pytest.raises(ValueError) as info:  # never the raw TypeError of cls()
        losses.get(name)
    message = str(info.value)
    assert message.startswith(f"{name!r} needs "), message
    assert f": pass keras_kd.losses.{cls.__name__}(" in message, message
    assert message.endswith(", ".join(f"{arg}=..." for arg in required) + ")."), message
    for arg in required:
        assert arg in message.split(": pass ")[0], message


def test_hint_message_exactly():
    with pytest.raises(ValueError) as info:
        losses.get("hint")
    assert str(info.value) == (
        "'hint' needs teacher_layer and student_layer: pass "
        "keras_kd.losses.HintDistillation(teacher_layer=..., student_layer=...)."
    )


def test_a_name_registered_later_is_covered_too():
    class _NeedsThree(losses.DistillationLoss):
        def __init__(self, first, second, *, third, scale=1.0, **kwargs):
            super().__init__(**kwargs)

    class _Defaults(losses.DistillationLoss):
        def __init__(self, scale=1.0, **kwargs):
            super().__init__(**kwargs)

    losses.register("_test_get_needs_three", _NeedsThree)
    losses.register("_test_get_defaults", _Defaults)
    try:
        with pytest.raises(ValueError) as info:
            losses.get("_test_get_needs_three")
        path = f"{__name__}.test_a_name_registered_later_is_covered_too.<locals>._NeedsThree"
        assert str(info.value) == (
            f"'_test_get_needs_three' needs first, second and third: pass "
            f"{path}(first=..., second=..., third=...)."
        )
        assert type(losses.get("_test_get_defaults")) is _Defaults
    finally:
        losses.REGISTRY.pop("_test_get_needs_three", None)
        losses.REGISTRY.pop("_test_get_defaults", None)


def test_unknown_names_and_other_types_keep_their_errors():
    with pytest.raises(ValueError, match="Unknown distillation loss 'nope'. Valid names"):
        losses.get("nope")
    with pytest.raises(TypeError, match="distillation_losses"):
        losses.get(3.0)
