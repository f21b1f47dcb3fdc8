"""The voice expression grammar: `af_bella` or a blend such as `af_bella(2)+af_sky(1)`.

synth resolves expressions to voice tensors; the gateway checks them before it charges
anything. Both read them with this one parser so they can never disagree on what is valid.

The parser runs in time linear in the expression's length and refuses anything longer than
`MAX_EXPRESSION_CHARS` before reading it: a voice field is attacker-controlled, and a
backtracking pattern over it once let one request hold the event loop for most of a minute.
Each piece is checked with plain string operations and patterns that cannot backtrack
(`fullmatch` over a single character class, or digits around at most one dot).
"""

from __future__ import annotations

import re

# Blends beyond a handful of voices are a mistake or an attempt to make us do busy work.
MAX_COMPONENTS = 8
# Eight components of a 32-character name and a weight such as `(12.5)`, with room for spaces.
MAX_EXPRESSION_CHARS = 400
MAX_NAME_CHARS = 32
MAX_WEIGHT_CHARS = 16

_NAME = re.compile(r"[A-Za-z0-9_]+")
_DIGITS = re.compile(r"[0-9]+")


class VoiceExpressionError(ValueError):
    """An expression that cannot be read; the message says why, for the caller to see."""


def parse_voice_expression(
    expression: str, *, max_chars: int | None = MAX_EXPRESSION_CHARS
) -> list[tuple[str, float]]:
    """The (name, weight) components, weights as written (default 1), not yet normalized.

    `max_chars=None` lifts the length cap; only the tests that measure the parser's growth
    use it.
    """
    if max_chars is not None and len(expression) > max_chars:
        raise VoiceExpressionError(f"voice must be at most {max_chars} characters")
    text = expression.strip()
    if not text:
        raise VoiceExpressionError("voice is required")
    if text.count("+") >= MAX_COMPONENTS:
        raise VoiceExpressionError(f"a blend may mix at most {MAX_COMPONENTS} voices")
    return [_component(part, text) for part in text.split("+")]


def _component(part: str, expression: str) -> tuple[str, float]:
    piece = part.strip()
    name, opened, rest = piece.partition("(")
    name = name.strip()
    weight_text = "1"
    if opened:
        if not rest.endswith(")"):
            raise _unreadable(piece, expression)
        weight_text = rest[:-1].strip()
    if not (0 < len(name) <= MAX_NAME_CHARS and _NAME.fullmatch(name)):
        raise _unreadable(piece, expression)
    if not _is_decimal(weight_text):
        raise _unreadable(piece, expression)
    weight = float(weight_text)
    if weight <= 0:
        raise VoiceExpressionError(f"voice weight must be positive in {_quoted(piece)}")
    return name, weight


def _is_decimal(text: str) -> bool:
    """`12`, `1.5` or `.5`: digits with at most one dot, and a digit after it."""
    if not 0 < len(text) <= MAX_WEIGHT_CHARS:
        return False
    whole, dot, fraction = text.partition(".")
    if dot:
        return (not whole or _DIGITS.fullmatch(whole) is not None) and (
            _DIGITS.fullmatch(fraction) is not None
        )
    return _DIGITS.fullmatch(whole) is not None


def _unreadable(piece: str, expression: str) -> VoiceExpressionError:
    return VoiceExpressionError(
        f"cannot read {_quoted(piece)} in voice {_quoted(expression)}; "
        "expected e.g. 'af_bella' or 'af_bella(2)+af_sky(1)'"
    )


def _quoted(text: str, limit: int = 60) -> str:
    """`text` quoted for an error message, shortened: messages must not echo a huge field."""
    return repr(text if len(text) <= limit else text[:limit] + "…")
