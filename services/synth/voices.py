"""Which voices exist, what the aliases mean, and how a voice expression becomes a mix.

A voice expression is a built-in voice (`af_bella`), an alias (`alloy`, `af`) or a blend of
either, `af_bella(2)+af_sky(1)`: weights are relative (normalized to sum 1), 1 when omitted.
A blend speaks its first component's language. Torch-free: the engine turns a `VoiceMix` into
a tensor.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from services.common.voice_expressions import VoiceExpressionError, parse_voice_expression


@dataclass(frozen=True)
class Language:
    code: str  # Kokoro's one-letter code, the first letter of its voices' names
    tag: str  # what ListVoices reports
    name: str


LANGUAGES: dict[str, Language] = {
    language.code: language
    for language in (
        Language("a", "en-us", "American English"),
        Language("b", "en-gb", "British English"),
        Language("e", "es", "Spanish"),
        Language("f", "fr-fr", "French"),
        Language("h", "hi", "Hindi"),
        Language("i", "it", "Italian"),
        Language("j", "ja", "Japanese"),
        Language("p", "pt-br", "Brazilian Portuguese"),
        Language("z", "zh", "Mandarin Chinese"),
    )
}

_GENDERS = {"f": "female", "m": "male"}

# Kokoro-82M v1.0's 54 voices, as hexgrad published them.
_V1_VOICE_NAMES = """
af_alloy af_aoede af_bella af_heart af_jessica af_kore af_nicole af_nova af_river af_sarah
af_sky am_adam am_echo am_eric am_fenrir am_liam am_michael am_onyx am_puck am_santa
bf_alice bf_emma bf_isabella bf_lily bm_daniel bm_fable bm_george bm_lewis
ef_dora em_alex em_santa ff_siwis hf_alpha hf_beta hm_omega hm_psi if_sara im_nicola
jf_alpha jf_gongitsune jf_nezumi jf_tebukuro jm_kumo pf_dora pm_alex pm_santa
zf_xiaobei zf_xiaoni zf_xiaoxiao zf_xiaoyi zm_yunjian zm_yunxi zm_yunxia zm_yunyang
"""
V1_VOICES: tuple[str, ...] = tuple(_V1_VOICE_NAMES.split())

# The hosted Kokoro-82M listing's voices (its default first), which must all work here.
_HOSTED_LISTING_NAMES = """
af af_bella af_sarah am_adam am_michael bf_emma bf_isabella bm_george bm_lewis af_nicole af_sky
"""
HOSTED_LISTING_VOICES: tuple[str, ...] = tuple(_HOSTED_LISTING_NAMES.split())

# The hosted listing's default voice: an equal blend of two of its American women.
HOSTED_ALIASES: dict[str, str] = {"af": "af_bella(1)+af_sarah(1)"}

# OpenAI's voices, each given the Kokoro voice closest in gender and character. Five have a
# Kokoro namesake; the rest: ash (deep, clear male), ballad (warm, storytelling male), coral
# (warm female: Kokoro's best-rated af_heart), sage (calm female), shimmer (bright female),
# verse (lively, expressive male).
OPENAI_ALIASES: dict[str, str] = {
    "alloy": "af_alloy",
    "ash": "am_michael",
    "ballad": "bm_george",
    "coral": "af_heart",
    "echo": "am_echo",
    "fable": "bm_fable",
    "nova": "af_nova",
    "onyx": "am_onyx",
    "sage": "af_sarah",
    "shimmer": "af_bella",
    "verse": "am_puck",
}

DEFAULT_ALIASES: dict[str, str] = {**HOSTED_ALIASES, **OPENAI_ALIASES}

_BUILTIN_NAME = re.compile(r"^[a-z][fm]_[a-z0-9]+$")
# The error message lists this many ids before pointing at ListVoices.
_SUGGESTIONS = 8


class VoiceError(ValueError):
    """A voice expression that does not name usable voices; the message says why."""


class VoiceKind(Enum):
    BUILTIN = "builtin"
    ALIAS = "alias"
    BLEND = "blend"


@dataclass(frozen=True)
class VoiceMix:
    """Built-in voices with weights summing to 1, in the order given."""

    components: tuple[tuple[str, float], ...]

    @property
    def language_code(self) -> str:
        return self.components[0][0][0]

    @property
    def expression(self) -> str:
        """The mix as a blend expression (a single voice is just its name)."""
        if len(self.components) == 1:
            return self.components[0][0]
        return "+".join(f"{name}({weight:.4g})" for name, weight in self.components)


@dataclass(frozen=True)
class VoiceEntry:
    """One row of ListVoices."""

    id: str
    language: str
    gender: str
    kind: VoiceKind
    target: str
    # Whether Synthesize can time its words (its language's G2P says which phonemes each
    # word became).
    word_timestamps: bool = False


def is_builtin_name(name: str) -> bool:
    return bool(_BUILTIN_NAME.match(name)) and name[0] in LANGUAGES


class VoiceCatalog:
    """The voices of one weights folder, the aliases over them, the languages we speak, and
    those of them whose words we can time."""

    def __init__(
        self,
        builtin_names: Iterable[str],
        spoken_languages: Collection[str],
        timed_languages: Collection[str] = (),
        aliases: Mapping[str, str] = DEFAULT_ALIASES,
    ) -> None:
        self._builtins = sorted(name for name in builtin_names if is_builtin_name(name))
        self._builtin_set = frozenset(self._builtins)
        self._spoken = frozenset(spoken_languages)
        self._timed = self._spoken & frozenset(timed_languages)
        self._aliases: dict[str, str] = {}
        for alias, target in aliases.items():
            # An alias whose voices this weights folder lacks is dropped, not offered broken.
            try:
                self._mix(target, allow_aliases=False)
            except VoiceError:
                continue
            self._aliases[alias] = target

    @property
    def builtin_names(self) -> list[str]:
        return list(self._builtins)

    @property
    def spoken_languages(self) -> list[Language]:
        return [language for code, language in LANGUAGES.items() if code in self._spoken]

    def resolve(self, expression: str) -> VoiceMix:
        """The mix an expression stands for; VoiceError if it names no usable voice."""
        mix = self._mix(expression, allow_aliases=True)
        language = LANGUAGES[mix.language_code]
        if language.code not in self._spoken:
            spoken = ", ".join(lang.tag for lang in self.spoken_languages)
            raise VoiceError(
                f"voice {expression.strip()!r} speaks {language.name}, which this server cannot "
                f"phonemize offline (its G2P packages are not installed); languages spoken here: "
                f"{spoken}"
            )
        return mix

    @property
    def timed_languages(self) -> list[Language]:
        """The spoken languages whose words can be timed."""
        return [language for code, language in LANGUAGES.items() if code in self._timed]

    def has_word_timestamps(self, mix: VoiceMix) -> bool:
        """Whether the words `mix` speaks can be timed: as its (first voice's) language's are."""
        return mix.language_code in self._timed

    def entries(self) -> list[VoiceEntry]:
        """Built-ins first, then aliases and named blends; voices of unspoken languages omitted."""
        rows: list[VoiceEntry] = []
        for name in self._builtins:
            if name[0] in self._spoken:
                rows.append(
                    VoiceEntry(
                        name,
                        LANGUAGES[name[0]].tag,
                        _GENDERS[name[1]],
                        VoiceKind.BUILTIN,
                        "",
                        word_timestamps=name[0] in self._timed,
                    )
                )
        for alias, target in sorted(self._aliases.items()):
            mix = self._mix(target, allow_aliases=False)
            if mix.language_code not in self._spoken:
                continue
            genders = {_GENDERS[name[1]] for name, _ in mix.components}
            kind = VoiceKind.BLEND if len(mix.components) > 1 else VoiceKind.ALIAS
            gender = genders.pop() if len(genders) == 1 else ""
            rows.append(
                VoiceEntry(
                    alias,
                    LANGUAGES[mix.language_code].tag,
                    gender,
                    kind,
                    target,
                    word_timestamps=mix.language_code in self._timed,
                )
            )
        return rows

    def _mix(self, expression: str, *, allow_aliases: bool) -> VoiceMix:
        try:
            components = parse_voice_expression(expression)
        except VoiceExpressionError as error:
            raise VoiceError(str(error)) from error
        weights: dict[str, float] = {}
        for name, weight in components:
            for builtin, share in self._expand(name, allow_aliases):
                weights[builtin] = weights.get(builtin, 0.0) + weight * share
        total = sum(weights.values())
        return VoiceMix(tuple((name, weight / total) for name, weight in weights.items()))

    def _expand(self, name: str, allow_aliases: bool) -> tuple[tuple[str, float], ...]:
        if name in self._builtin_set:
            return ((name, 1.0),)
        if allow_aliases and name in self._aliases:
            return self._mix(self._aliases[name], allow_aliases=False).components
        raise VoiceError(f"unknown voice {name!r}; valid voices include {self._suggestions()}")

    def _suggestions(self) -> str:
        spoken = [name for name in self._builtins if name[0] in self._spoken]
        listed = ", ".join([*list(self._aliases)[:3], *spoken[:_SUGGESTIONS]])
        return f"{listed}, … (see ListVoices)"
