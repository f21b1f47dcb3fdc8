"""Grapheme-to-phoneme per language, built from what is installed here, offline.

English (a, b) uses misaki's G2P with spaCy's `en_core_web_sm` aliased to the installed copy;
Spanish, French, Hindi, Italian and Portuguese (e, f, h, i, p) use espeak-ng through
espeakng_loader's bundled library and data; Mandarin (z) uses misaki's zh G2P when `misaki[zh]`'s
packages (jieba, pypinyin, pypinyin-dict, cn2an, ordered-set), which ship their dictionaries, are
installed. Japanese (j) needs pyopenjtalk and unidic, whose dictionaries download at run time,
so it is not spoken offline. A language whose G2P cannot be built is simply not spoken: its
voices are left out of ListVoices and refused with a message saying so.

misaki's English G2P also returns its tokens, each with the phonemes it became: they are kept
(as a Pronunciation) so that words can be timed; espeak-ng and Mandarin's G2P return none.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from services.synth.models import HUB_REPO_ID
from services.synth.text.chunking import Phonemize
from services.synth.text.split import Span
from services.synth.text.words import PhonemeToken, Pronunciation

_log = logging.getLogger("synth.g2p")


class _LockedPhonemizer:
    """One language's G2P, serialized: spaCy and espeak-ng are not safe to call concurrently."""

    def __init__(self, g2p: object) -> None:
        self._g2p = g2p
        self._lock = threading.Lock()

    def __call__(self, text: str) -> Pronunciation:
        if not text:
            return Pronunciation("", ())
        with self._lock:
            result = self._g2p(text)  # type: ignore[operator]
        # misaki returns (phonemes, tokens) for every language; tokens only for English.
        phonemes, tokens = result if isinstance(result, tuple) else (result, None)
        phonemes = phonemes or ""
        stripped = phonemes.strip()
        if tokens is None:
            return Pronunciation(stripped)
        lead = len(phonemes) - len(phonemes.lstrip())
        return Pronunciation(stripped, _phoneme_tokens(tokens, phonemes, lead, len(stripped)))


def _phoneme_tokens(
    tokens: Sequence[Any], phonemes: str, lead: int, length: int
) -> tuple[PhonemeToken, ...] | None:
    """misaki's tokens with where their phonemes are in the stripped phoneme string: misaki
    joins each token's phonemes and its whitespace, then the caller strips `lead` characters."""
    found: list[PhonemeToken] = []
    at = 0
    for token in tokens:
        spoken = token.phonemes or ""  # None: a word it could not say (`unk` is "" here)
        start = min(max(at - lead, 0), length)
        end = min(max(at + len(spoken) - lead, 0), length)
        found.append(PhonemeToken(str(token.text), Span(start, end)))
        at += len(spoken) + len(token.whitespace)
    if at != len(phonemes):
        # Not the string misaki joined: better no words than words on the wrong phonemes.
        _log.warning("G2P tokens do not add up to its phonemes; no word timestamps for this text")
        return None
    return tuple(found)


def _build(language_code: str) -> Phonemize:
    if language_code in "ab":
        from services.synth.text.g2p_spacy_alias import install_en_core_web_sm_alias

        install_en_core_web_sm_alias()
    from kokoro import KPipeline
    from loguru import logger

    # kokoro logs through loguru, outside our JSON logs; its warnings here are about chunking
    # and downloads we do ourselves or never do.
    logger.disable("kokoro")

    # A "quiet" pipeline (model=False): only its G2P, built exactly as KPipeline builds it.
    # KPipeline uses the repo id only to pick the G2P version and to download voices, which we
    # never ask it to do.
    pipeline = KPipeline(lang_code=language_code, repo_id=HUB_REPO_ID, model=False)
    return _LockedPhonemizer(pipeline.g2p)


def _quiet_phonemizer_warnings() -> None:
    # phonemizer warns on every input with a foreign word ("language switches removed"),
    # which is ordinary text, not an operator's problem.
    # A filter, not a level: phonemizer resets its logger's level whenever a backend is built.
    logging.getLogger("phonemizer").addFilter(lambda record: record.levelno >= logging.ERROR)
    # jieba (Mandarin) announces building its dictionary cache on its own stderr handler.
    logging.getLogger("jieba").setLevel(logging.WARNING)


def build_phonemizers(language_codes: Iterable[str]) -> dict[str, Phonemize]:
    """A working phonemizer for each language that can be spoken offline here; others left out."""
    _quiet_phonemizer_warnings()
    phonemizers: dict[str, Phonemize] = {}
    for code in language_codes:
        try:
            phonemize = _build(code)
            phonemize("Hello.")  # the first call loads dictionaries: fail here, not mid-request
        except Exception as error:  # any failure means "not spoken here"
            _log.info(
                "language %s not available offline: %s",
                code,
                error,
                extra={"language": code},
            )
            continue
        phonemizers[code] = phonemize
    return phonemizers
