"""Which phonemes speak each word of the input as written: G2P tokens mapped back to the input.

A word is a run of the input between separators (whitespace, control characters), exactly as
written: "$5.20,", "Dr.", "2026", '"Hello."'. The G2P reads a piece's normalized text in its own
tokens ("$", "5.20", ",") and says which phonemes each became (English's misaki does; espeak-ng
and Mandarin's G2P do not: no tokens, no words). Each token is found in the normalized text, in
order; normalize() turns every separator run into one space, so the normalized text's k-th word
is the input's k-th run, and a token's phonemes belong to the run it was found in (a token not
found there, text the G2P rewrote, to the run it follows).

Punctuation written against a word is part of it. A run with nothing voiced of its own (a dash
between spaces, an ellipsis, a symbol the G2P does not speak) joins the word before it in its
piece, or the word after it when it comes first: every character outside the separators is in
exactly one word, and every word has a voice.

A word's phonemes are its voiced ones, from its first that is not punctuation to its last, so
the pause a comma or a full stop makes falls between words rather than inside one.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass

from services.synth.text.normalize import SEPARATOR_CHARACTERS
from services.synth.text.split import Span

_RUN = re.compile(f"[^{SEPARATOR_CHARACTERS}]+")
# Kokoro's symbols for pauses (punctuation and the space between words), and punctuation its
# vocabulary lacks (dropped by the model, so it takes no time at all).
PAUSES = frozenset(';:,.!?—…"()“” ¡¿«»')


def is_voiced(phonemes: str) -> bool:
    """Whether `phonemes` say anything but pauses."""
    return any(phoneme not in PAUSES for phoneme in phonemes)


@dataclass(frozen=True)
class PhonemeToken:
    """One token as the G2P read it, and the phonemes it became (indices into the phoneme
    string, end exclusive)."""

    text: str
    phonemes: Span


@dataclass(frozen=True)
class Pronunciation:
    """What the G2P made of a text: its phonemes, and, when the G2P says, its tokens'."""

    phonemes: str
    tokens: tuple[PhonemeToken, ...] | None = None

    @classmethod
    def of(cls, result: str | Pronunciation) -> Pronunciation:
        """A phonemizer's answer as a Pronunciation: bare phonemes say nothing of words."""
        return result if isinstance(result, Pronunciation) else cls(result)


@dataclass(frozen=True)
class WordPhonemes:
    """A word of the input as written, and the phonemes that voice it."""

    # Where the word is in the input (code points, end exclusive).
    span: Span
    # Its voiced phonemes: indices into its chunk's phoneme string (a piece's, until the chunk
    # is assembled). Empty (start == end) only for a piece with nothing voiced at all.
    phonemes: Span

    def shifted(self, offset: int) -> WordPhonemes:
        moved = Span(self.phonemes.start + offset, self.phonemes.end + offset)
        return WordPhonemes(self.span, moved)

    def extended_to(self, end: int) -> WordPhonemes:
        """The same word with the input up to `end` (unvoiced text after it) made part of it."""
        return WordPhonemes(Span(self.span.start, end), self.phonemes)

    def extended_from(self, start: int) -> WordPhonemes:
        """The same word with the input from `start` (unvoiced text before it) made part of it."""
        return WordPhonemes(Span(start, self.span.end), self.phonemes)

    def cut_at(self, limit: int) -> WordPhonemes:
        """The same word when its phonemes are cut to the first `limit`."""
        cut = Span(min(self.phonemes.start, limit), min(self.phonemes.end, limit))
        return WordPhonemes(self.span, cut)


def words_of(
    text: str, piece: Span, normalized: str, pronunciation: Pronunciation
) -> tuple[WordPhonemes, ...] | None:
    """The words of `piece` (a span of the input `text`, normalized to `normalized`, which the
    G2P pronounced) with their phonemes' indices in `pronunciation.phonemes`; None when the G2P
    did not say which phonemes each token became."""
    if pronunciation.tokens is None:
        return None
    runs = [
        Span(piece.start + m.start(), piece.start + m.end()) for m in _RUN.finditer(piece.of(text))
    ]
    run_starts = [m.start() for m in _RUN.finditer(normalized)]
    if not runs:
        return ()
    if len(run_starts) != len(runs):
        # normalize() should make this impossible; one word for the piece rather than wrong ones.
        runs, run_starts = [Span(runs[0].start, runs[-1].end)], [0]
    voiced: list[Span | None] = [None] * len(runs)
    phonemes = pronunciation.phonemes
    cursor = 0
    for token in pronunciation.tokens:
        needle = token.text.strip()
        found = normalized.find(needle, cursor) if needle else -1
        at = cursor if found < 0 else found
        if found >= 0:
            cursor = found + len(needle)
        run = max(bisect_right(run_starts, at) - 1, 0)
        for index in range(token.phonemes.start, min(token.phonemes.end, len(phonemes))):
            if phonemes[index] in PAUSES:
                continue
            known = voiced[run]
            voiced[run] = (
                Span(index, index + 1)
                if known is None
                else Span(min(known.start, index), max(known.end, index + 1))
            )
    return _attach_the_unvoiced(runs, voiced)


def _attach_the_unvoiced(runs: list[Span], voiced: list[Span | None]) -> tuple[WordPhonemes, ...]:
    words: list[WordPhonemes] = []
    unvoiced_from: int | None = None  # where unvoiced runs before the first word began
    for run, phonemes in zip(runs, voiced, strict=True):
        if phonemes is None:
            if words:
                before = words[-1]
                words[-1] = WordPhonemes(Span(before.span.start, run.end), before.phonemes)
            elif unvoiced_from is None:
                unvoiced_from = run.start
            continue
        start = run.start if unvoiced_from is None else unvoiced_from
        unvoiced_from = None
        words.append(WordPhonemes(Span(start, run.end), phonemes))
    if not words:
        return (WordPhonemes(Span(runs[0].start, runs[-1].end), Span(0, 0)),)
    return tuple(words)
