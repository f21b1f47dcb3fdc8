"""Clean a piece of input before G2P, without changing what it says."""

from __future__ import annotations

import re
import unicodedata

_CONTROL_OR_SPACE = re.compile(r"[\s\x00-\x1f\x7f]+")
# Typographic punctuation the English G2P does not know, mapped to what it does.
_PUNCTUATION = str.maketrans({"‘": "'", "’": "'", "‚": "'", "„": '"', "«": '"', "»": '"'})


def normalize(text: str) -> str:
    """NFC, straight apostrophes, every run of whitespace or control characters one space."""
    composed = unicodedata.normalize("NFC", text).translate(_PUNCTUATION)
    return _CONTROL_OR_SPACE.sub(" ", composed).strip()
