"""Clean a piece of input before G2P, without changing what it says."""

from __future__ import annotations

import re
import unicodedata

# What separates words, as a regex character class's contents: normalize() turns each run of
# them into one space, so the input's runs between them and the normalized text's words
# correspond one to one (text/words.py).
SEPARATOR_CHARACTERS = r"\s\x00-\x1f\x7f"
_CONTROL_OR_SPACE = re.compile(f"[{SEPARATOR_CHARACTERS}]+")
# Typographic punctuation the English G2P does not know, mapped to what it does.
_PUNCTUATION = str.maketrans({"‘": "'", "’": "'", "‚": "'", "„": '"', "«": '"', "»": '"'})


def normalize(text: str) -> str:
    """NFC, straight apostrophes, every run of whitespace or control characters one space."""
    composed = unicodedata.normalize("NFC", text).translate(_PUNCTUATION)
    return _CONTROL_OR_SPACE.sub(" ", composed).strip()
