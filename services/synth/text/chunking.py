"""Pack input text into phoneme chunks the model speaks one at a time.

Every chunk ends where a speaker pauses: at a clause (`, ; : —`) or at a sentence's end, never
inside a clause, the first chunk included. A chunk is whole clauses packed up to a phoneme
budget: the first chunk's budget is small, so it is usually the first clause alone (or a few
short ones) and the first audio costs one short model call; later budgets grow to
`ChunkBudgets.later`. A clause over its chunk's budget is a chunk on its own: prosody runs across
a clause, and cutting it is what a listener hears as a stumble. Only a clause longer than the
model's limit (`hard_max`) is cut, at words, into parts of about equal length.

Planning is lazy and phonemizes each clause once: the first chunk costs the G2P of its own
clauses and of the one after them (to know it does not fit), never the whole sentence; a clause
read ahead and not taken waits, phonemized, for the next chunk. Only the parts of a clause over
the model's limit are phonemized a second time.

Where the G2P says which phonemes each of its tokens became, a chunk also knows which phonemes
speak each word of the input as written (words.py), for word timestamps.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from services.synth.text.normalize import normalize
from services.synth.text.split import Span, clauses, sentences, words
from services.synth.text.words import Pronunciation, WordPhonemes, is_voiced, words_of

# Text (already normalized) to phonemes in the model's alphabet: bare, or as a Pronunciation
# that also says which phonemes each of the G2P's tokens became.
Phonemize = Callable[[str], str | Pronunciation]

# A clause over the model's limit is cut into parts aimed at this share of it, so that a part
# whose G2P comes out longer than its share of the characters still fits.
_CUT_TARGET = 0.8


@dataclass(frozen=True)
class ChunkBudgets:
    """Phoneme budgets: the first chunk's, the one later chunks grow to, the model's limit.

    Budgets bound how many clauses a chunk packs; a single clause is never cut to fit one, only
    to fit `hard_max`.
    """

    first: int
    later: int
    hard_max: int

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.later <= self.hard_max:
            raise ValueError(f"need 0 < first <= later <= hard_max, got {self}")

    def for_chunk(self, index: int) -> int:
        return min(self.later, self.first << min(index, 16))


@dataclass(frozen=True)
class TextChunk:
    index: int
    # The input characters this chunk speaks (code points, end exclusive).
    span: Span
    phonemes: str
    # No text follows this chunk.
    is_last: bool
    # It ends at a sentence's end, not inside a sentence at a clause (the pause after it is a
    # sentence's, not a comma's: audio/seams.py).
    ends_sentence: bool = True
    # The input's words it speaks, with their phonemes' indices in `phonemes`; None when the
    # G2P does not say which phonemes each word became.
    words: tuple[WordPhonemes, ...] | None = None


@dataclass(frozen=True)
class _Piece:
    """A clause (or a part of one over the model's limit), phonemized."""

    span: Span
    phonemes: str
    ends_sentence: bool
    # Indices into this piece's `phonemes`.
    words: tuple[WordPhonemes, ...] | None = None


class _Planner:
    def __init__(self, text: str, phonemize: Phonemize, budgets: ChunkBudgets) -> None:
        self._text = text
        self._phonemize = phonemize
        self._budgets = budgets
        self._sentences = deque(sentences(text))
        # Clause spans of the sentences taken so far, not yet phonemized.
        self._clauses: deque[Span] = deque()
        # Phonemized pieces read ahead and not yet packed.
        self._pending: deque[_Piece] = deque()

    def chunks(self) -> Iterator[TextChunk]:
        index = 0
        while (first := self._take()) is not None:
            budget = self._budgets.for_chunk(index)
            parts = [first]
            size = len(first.phonemes)
            while size < budget and (piece := self._take()) is not None:
                cost = len(piece.phonemes) + (1 if size and piece.phonemes else 0)
                if size + cost > budget:
                    # It starts the next chunk, already phonemized.
                    self._pending.appendleft(piece)
                    break
                parts.append(piece)
                size += cost
            phonemes = " ".join(part.phonemes for part in parts if part.phonemes)
            yield TextChunk(
                index=index,
                span=Span(parts[0].span.start, parts[-1].span.end),
                # A chunk of bare punctuation (a lone dash between two long clauses) is silence:
                # the model would voice it as a breath or a click.
                phonemes=phonemes if is_voiced(phonemes) else "",
                is_last=self._exhausted(),
                ends_sentence=parts[-1].ends_sentence,
                words=_joined_words(parts),
            )
            index += 1

    def _exhausted(self) -> bool:
        return not (self._pending or self._clauses or self._sentences)

    def _take(self) -> _Piece | None:
        """The next piece of text to speak, phonemized; None at the end of the input."""
        if self._pending:
            return self._pending.popleft()
        if not self._clauses:
            if not self._sentences:
                return None
            self._clauses.extend(clauses(self._text, self._sentences.popleft()))
        piece = self._piece(self._clauses.popleft(), ends_sentence=not self._clauses)
        if len(piece.phonemes) <= self._budgets.hard_max:
            return piece
        self._pending.extendleft(reversed(self._cut(piece)))
        return self._pending.popleft()

    def _piece(self, span: Span, *, ends_sentence: bool) -> _Piece:
        normalized = normalize(span.of(self._text))
        pronunciation = Pronunciation.of(self._phonemize(normalized))
        said = words_of(self._text, span, normalized, pronunciation)
        return _Piece(span, pronunciation.phonemes, ends_sentence, said)

    def _cut(self, piece: _Piece) -> list[_Piece]:
        """A piece over the model's limit as parts within it, cut at words, each phonemized once
        (and cut again, should its G2P still come out too long)."""
        hard_max = self._budgets.hard_max
        spans = words(self._text, piece.span)
        if len(spans) < 2:
            # One character the G2P spells out past the limit: say what fits.
            said = None if piece.words is None else tuple(w.cut_at(hard_max) for w in piece.words)
            return [_Piece(piece.span, piece.phonemes[:hard_max], piece.ends_sentence, said)]
        count = min(len(spans), math.ceil(len(piece.phonemes) / (_CUT_TARGET * hard_max)))
        parts: list[_Piece] = []
        groups = _balanced(spans, count)
        for number, group in enumerate(groups, start=1):
            last = number == len(groups)
            span = Span(group[0].start, group[-1].end)
            part = self._piece(span, ends_sentence=piece.ends_sentence and last)
            parts.extend(self._cut(part) if len(part.phonemes) > hard_max else [part])
        return parts


def _balanced(spans: list[Span], count: int) -> list[list[Span]]:
    """`spans` in `count` consecutive groups of about equal characters, none empty."""
    total = spans[-1].end - spans[0].start
    groups: list[list[Span]] = [[]]
    for position, span in enumerate(spans):
        left = len(spans) - position
        wanted = count - len(groups)
        # Close the group at its share of the characters, or when every remaining span must
        # start a group of its own.
        share = total * len(groups) / count
        if groups[-1] and wanted and (span.start - spans[0].start >= share or left == wanted):
            groups.append([])
        groups[-1].append(span)
    return groups


def _joined_words(parts: list[_Piece]) -> tuple[WordPhonemes, ...] | None:
    """The parts' words, their phonemes' indices moved to where the parts' phonemes are in the
    chunk's (joined by spaces, parts without phonemes left out). A part with nothing voiced (a
    dash that is a clause of its own) joins the word before it, or the word after it when it
    comes first, as an unvoiced run does inside a part (words.py)."""
    if any(part.words is None for part in parts):
        return None
    joined: list[WordPhonemes] = []
    unvoiced_from: int | None = None
    offset = 0
    for part in parts:
        if part.phonemes and offset:
            offset += 1  # the space joining it to the part before
        for word in part.words or ():
            if not word.phonemes.end > word.phonemes.start and len(parts) > 1:
                if joined:
                    joined[-1] = joined[-1].extended_to(word.span.end)
                elif unvoiced_from is None:
                    unvoiced_from = word.span.start
                continue
            moved = word.shifted(offset)
            if unvoiced_from is not None:
                moved, unvoiced_from = moved.extended_from(unvoiced_from), None
            joined.append(moved)
        offset += len(part.phonemes)
    if unvoiced_from is not None:  # nothing voiced in the whole chunk
        return (WordPhonemes(Span(unvoiced_from, parts[-1].span.end), Span(0, 0)),)
    return tuple(joined)


def plan_chunks(text: str, phonemize: Phonemize, budgets: ChunkBudgets) -> Iterator[TextChunk]:
    """The chunks that speak `text`, planned one at a time as they are asked for."""
    return _Planner(text, phonemize, budgets).chunks()
