"""The voice expression grammar: `af_bella` or a blend such as `af_bella(2)+af_sky(1)`.

synth resolves expressions to voice tensors; the gateway checks them before it charges
anything. Both read them with this one parser so they can never disagree on what is valid.
"""

from __future__ import annotations

import re

_COMPONENT = re.compile(r"^\s*([A-Za-z0-9_]+)\s*(?:\(\s*([0-9]*\.?[0-9]+)\s*\))?\s*$")
# Blends beyond a handful of voices are a mistake or an attempt to make us do busy work.
MAX_COMPONENTS = 8


class VoiceExpressionError(ValueError):
    """An expression that cannot be read; the message says why, for the caller to see."""


def parse_voice_expression(expression: str) -> list[tuple[str, float]]:
    """The (name, weight) components, weights as written (default 1), not yet normalized."""
    text = expression.strip()
    if not text:
        raise VoiceExpressionError("voice is required")
    parts = text.split("+")
    if len(parts) > MAX_COMPONENTS:
        raise VoiceExpressionError(f"a blend may mix at most {MAX_COMPONENTS} voices")
    components = []
    for part in parts:
        match = _COMPONENT.match(part)
        if match is None:
            raise VoiceExpressionError(
                f"cannot read {part.strip()!r} in voice {text!r}; "
                "expected e.g. 'af_bella' or 'af_bella(2)+af_sky(1)'"
            )
        weight = float(match.group(2)) if match.group(2) is not None else 1.0
        if weight <= 0:
            raise VoiceExpressionError(f"voice weight must be positive in {part.strip()!r}")
        components.append((match.group(1), weight))
    return components
