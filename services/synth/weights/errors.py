"""The one error the weights package raises for expected failures."""

from __future__ import annotations


class WeightsError(RuntimeError):
    """Weights missing, unreachable or inconsistent.

    The message is one line that says what went wrong and what to do about it;
    `python -m services.synth.weights` prints it as is, without a traceback.
    """
