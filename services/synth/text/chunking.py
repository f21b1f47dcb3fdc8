"""Pack input text into phoneme chunks the model speaks one at a time.

The first chunk is short so the first audio comes fast; each later budget doubles up to the
model's best length, so every chunk is ready before the previous one has finished playing.
Chunks end at sentence boundaries where they can, else at clauses, else at words; none is ever
longer than the model's limit. Planning is lazy: a sentence is phonemized only when the chunk
that speaks it is being planned. Where the G2P says which phonemes each of its tokens became, a
chunk also knows which phonemes speak each word of the input as written (words.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum

from services.synth.text.normalize import normalize
from services.synth.text.split import Span, clauses, sentences, words
from services.synth.text.words import Pronunciation, WordPhonemes, words_of

# Text (already normalized) to phonemes in the model's alphabet: bare, or as a Pronunciation
# that also says which phonemes each of the G2P's tokens became.
Phonemize = Callable[[str], str | Pronunciation]


@dataclass(frozen=True)
class ChunkBudgets:
    """Phoneme budgets: the first chunk's, the one later chunks grow to, the model's limit."""

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
    # The input's words it speaks, with their phonemes' indices in `phonemes`; None when the
    # G2P does not say which phonemes each word became.
    words: tuple[WordPhonemes, ...] | None = None


class _Level(IntEnum):
    SENTENCE = 0
    CLAUSE = 1
    WORD = 2
    FRAGMENT = 3


@dataclass(frozen=True)
class _Piece:
    span: Span
    phonemes: str
    level: _Level
    # Indices into this piece's `phonemes`.
    words: tuple[WordPhonemes, ...] | None = None


class _Planner:
    def __init__(self, text: str, phonemize: Phonemize, budgets: ChunkBudgets) -> None:
        self._text = text
        self._phonemize = phonemize
        self._budgets = budgets
        self._sentences = sentences(text)
        self._next_sentence = 0
        self._pending: deque[_Piece] = deque()

    def chunks(self) -> Iterator[TextChunk]:
        index = 0
        while True:
            parts = self._fill(self._budgets.for_chunk(index), first=index == 0)
            if not parts:
                return
            exhausted = not self._pending and self._next_sentence == len(self._sentences)
            yield TextChunk(
                index=index,
                span=Span(parts[0].span.start, parts[-1].span.end),
                phonemes=" ".join(part.phonemes for part in parts if part.phonemes),
                is_last=exhausted,
                words=_joined_words(parts),
            )
            index += 1

    def _fill(self, budget: int, *, first: bool) -> list[_Piece]:
        parts: list[_Piece] = []
        size = 0
        while (piece := self._take()) is not None:
            cost = len(piece.phonemes) + (1 if parts and piece.phonemes else 0)
            if size + cost <= budget:
                parts.append(piece)
                size += cost
                continue
            if parts:
                # It starts the next chunk: ending here keeps the boundary a natural pause.
                self._pending.appendleft(piece)
                break
            finer = self._split(piece, first=first)
            if finer is None:
                return [piece]
            self._pending.extendleft(reversed(finer))
        return parts

    def _take(self) -> _Piece | None:
        if self._pending:
            return self._pending.popleft()
        if self._next_sentence == len(self._sentences):
            return None
        span = self._sentences[self._next_sentence]
        self._next_sentence += 1
        return self._piece(span, _Level.SENTENCE)

    def _piece(self, span: Span, level: _Level) -> _Piece:
        normalized = normalize(span.of(self._text))
        pronunciation = Pronunciation.of(self._phonemize(normalized))
        words = words_of(self._text, span, normalized, pronunciation)
        return _Piece(span, pronunciation.phonemes, level, words)

    def _split(self, piece: _Piece, *, first: bool) -> list[_Piece] | None:
        """Finer pieces for one too long for an empty chunk, or None to take it whole."""
        hard_max = self._budgets.hard_max
        if piece.level == _Level.SENTENCE:
            spans = clauses(self._text, piece.span)
            if len(spans) > 1:
                return [self._piece(span, _Level.CLAUSE) for span in spans]
        if piece.level <= _Level.CLAUSE:
            # A long clause is kept whole (better prosody) unless the first chunk must be short
            # or the model could not take it.
            if not first and len(piece.phonemes) <= hard_max:
                return None
            spans = words(self._text, piece.span)
            if len(spans) > 1:
                return [self._piece(span, _Level.WORD) for span in spans]
        if len(piece.phonemes) <= hard_max:
            return None
        if piece.span.end - piece.span.start < 2:
            # One character the G2P spells out past the limit: say what fits.
            said = None if piece.words is None else tuple(w.cut_at(hard_max) for w in piece.words)
            return [_Piece(piece.span, piece.phonemes[:hard_max], _Level.FRAGMENT, said)]
        # A "word" longer than the model's limit (a hash, a URL): halve it until it fits.
        middle = (piece.span.start + piece.span.end) // 2
        return [
            self._piece(Span(piece.span.start, middle), _Level.FRAGMENT),
            self._piece(Span(middle, piece.span.end), _Level.FRAGMENT),
        ]


def _joined_words(parts: list[_Piece]) -> tuple[WordPhonemes, ...] | None:
    """The parts' words, their phonemes' indices moved to where the parts' phonemes are in the
    chunk's (joined by spaces, parts without phonemes left out)."""
    if any(part.words is None for part in parts):
        return None
    joined: list[WordPhonemes] = []
    offset = 0
    for part in parts:
        if part.phonemes and offset:
            offset += 1  # the space joining it to the part before
        joined += [word.shifted(offset) for word in part.words or ()]
        offset += len(part.phonemes)
    return tuple(joined)


def plan_chunks(text: str, phonemize: Phonemize, budgets: ChunkBudgets) -> Iterator[TextChunk]:
    """The chunks that speak `text`, planned one at a time as they are asked for."""
    return _Planner(text, phonemize, budgets).chunks()
