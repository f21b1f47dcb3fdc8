"""Prediction ids: `pred_` and a ULID (time-ordered, so new rows land at the index's end)."""

from __future__ import annotations

from services.common.ids import is_id, new_id

PREDICTION = "pred"


def new_prediction_id() -> str:
    return new_id(PREDICTION)


def is_prediction_id(candidate: str) -> bool:
    return is_id(PREDICTION, candidate)
