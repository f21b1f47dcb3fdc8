"""`GET /v1/models` and `GET /v1/audio/voices`: free, but behind a valid key."""

from __future__ import annotations

from fastapi import APIRouter

from services.gateway.protocol import ModelCard, ModelList, VoiceCard, VoiceList
from services.gateway.routes.common import CurrentPrincipal, Seller, error_responses

router = APIRouter(tags=["catalog"])

# Kokoro-82M v1.0's release (2025-01-27), as OpenAI's `created`: stable across restarts.
MODEL_CREATED = 1_737_936_000
OWNED_BY = "kokoro-pay"


@router.get(
    "/v1/models",
    summary="List models",
    response_model=ModelList,
    responses=error_responses(401, 429, 502, 503, 504),
)
async def list_models(_: CurrentPrincipal, seller: Seller) -> ModelList:
    cards = [
        ModelCard(id=name, created=MODEL_CREATED, owned_by=OWNED_BY, description=model.description)
        for model in await seller.models()
        for name in (model.id, *model.aliases)
    ]
    return ModelList(data=cards)


@router.get(
    "/v1/audio/voices",
    summary="List voices",
    response_model=VoiceList,
    responses=error_responses(401, 429, 502, 503, 504),
)
async def list_voices(_: CurrentPrincipal, seller: Seller) -> VoiceList:
    voices = await seller.voices()
    return VoiceList(
        voices=[
            VoiceCard(
                id=v.id,
                name=v.id,
                language=v.language,
                gender=v.gender,
                kind=v.kind,
                target=v.target,
                word_timestamps=v.word_timestamps,
            )
            for v in voices
        ]
    )
