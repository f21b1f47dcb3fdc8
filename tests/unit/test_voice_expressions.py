"""The voice grammar both the gateway and synth read: what it accepts, what it refuses, and that
no string, however hostile, makes it do more than linear work."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from services.common.voice_expressions import (
    MAX_EXPRESSION_CHARS,
    VoiceExpressionError,
    parse_voice_expression,
)


@pytest.mark.parametrize(
    ("expression", "components"),
    [
        ("af_bella", [("af_bella", 1.0)]),
        (" af_bella ", [("af_bella", 1.0)]),
        ("af_bella(2)+af_sky(1)", [("af_bella", 2.0), ("af_sky", 1.0)]),
        ("af_bella( 2.5 ) + af_sky", [("af_bella", 2.5), ("af_sky", 1.0)]),
        ("af_bella(.5)+af_sky(1.)", None),  # "1." has no digit after its dot
        ("af_bella(.5)", [("af_bella", 0.5)]),
    ],
)
def test_expressions(expression: str, components: list[tuple[str, float]] | None) -> None:
    if components is None:
        with pytest.raises(VoiceExpressionError):
            parse_voice_expression(expression)
    else:
        assert parse_voice_expression(expression) == components


@pytest.mark.parametrize(
    ("expression", "complaint"),
    [
        ("", "required"),
        ("   ", "required"),
        ("a(0)", "positive"),
        ("a(1", "cannot read"),
        ("a(1)x", "cannot read"),
        ("a(1)(2)", "cannot read"),
        ("a(1.2.3)", "cannot read"),
        ("a(-1)", "cannot read"),
        ("a(1e3)", "cannot read"),
        ("a b", "cannot read"),
        ("a++b", "cannot read"),
        ("é", "cannot read"),
        ("+".join(["a"] * 9), "at most 8"),
        ("a" * 33, "cannot read"),
        ("a(" + "1" * 17 + ")", "cannot read"),
        ("a(" + "1" * MAX_EXPRESSION_CHARS + "!", f"at most {MAX_EXPRESSION_CHARS}"),
    ],
)
def test_refusals_say_why(expression: str, complaint: str) -> None:
    with pytest.raises(VoiceExpressionError, match=complaint):
        parse_voice_expression(expression)


def test_error_messages_do_not_echo_a_huge_field() -> None:
    with pytest.raises(VoiceExpressionError) as raised:
        parse_voice_expression("x" * 300 + "!")
    assert len(str(raised.value)) < 300


# Shapes that made the old backtracking pattern quadratic, and others built to probe each branch.
ADVERSARIAL: dict[str, Callable[[int], str]] = {
    "digits, no close": lambda n: "a(" + "1" * n + "!",
    "digits and dots": lambda n: "a(" + "1." * (n // 2) + "!",
    "open parens": lambda n: "a" + "(" * n,
    "spaces": lambda n: "a(" + " " * n + "1",
    "long name": lambda n: "a" * n + "(1)",
    "many pluses": lambda n: "a+" * (n // 2),
}


def _seconds(expression: str) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        with pytest.raises(VoiceExpressionError):
            parse_voice_expression(expression, max_chars=None)
        best = min(best, time.perf_counter() - started)
    return best


@pytest.mark.parametrize("shape", ADVERSARIAL, ids=list(ADVERSARIAL))
def test_parse_time_grows_linearly_with_the_length(shape: str) -> None:
    # The grammar itself, cap lifted: doubling the length at most about doubles the time (a
    # quadratic parser would quadruple it). Lengths large enough that the work, not the call,
    # dominates; the best of five runs keeps scheduler noise out.
    build = ADVERSARIAL[shape]
    small, large = _seconds(build(100_000)), _seconds(build(400_000))
    assert large / small < 4 * 2, (shape, small, large)  # quadratic would be about 16


def test_the_cap_refuses_a_long_field_whatever_it_holds() -> None:
    # The 50 KB string that once froze the gateway for 45 s (its refusal time is in bench/).
    with pytest.raises(VoiceExpressionError, match=f"at most {MAX_EXPRESSION_CHARS}"):
        parse_voice_expression("a(" + "1" * 50_000 + "!")
