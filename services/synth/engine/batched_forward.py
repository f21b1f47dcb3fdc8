"""Several Kokoro inputs in one padded forward pass, each item's output as if it ran alone.

`forward_batch` runs KModel.forward_with_tokens' stages on inputs padded to the longest one:
- ALBERT attends to each item's own tokens only (attention mask); the text encoders already
  take lengths and masks, and every other LSTM (the duration LSTM over tokens, the F0/N `shared`
  LSTM over frames) runs packed to each item's length;
- durations are rounded per item at the item's own speed, and each item's frames are aligned to
  its own tokens; frames are padded to the longest item's;
- the F0/N blocks and the decoder normalise and convolve under masks (`masked_layers`,
  `batched_decoder`); the harmonic source and the inverse STFT run per item, each item drawing
  its random numbers from its own generator in its own shapes.

`forward_one` is the unbatched reference: a batch of one pads nothing, so every layer runs its
module's own forward and the result is KModel's (with `generator=None`, its exact draws too).
The model must be in eval mode: dropout would make no two runs agree.

On a 2-core CPU batching does not pay (bench/batched_forward_bench.py): with 3% to 6% padding, a
batch of 8 speaks 0.62 to 0.69 times as fast as its items one by one. The vocoder's tensors
outgrow the cache, and its many element-wise passes run at memory speed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.nn.utils.rnn import pad_sequence

from services.synth.engine.batched_decoder import decode
from services.synth.engine.masked_layers import (
    Mask,
    adain_res_block,
    own_steps,
    packed_lstm,
    zero_padding,
)

if TYPE_CHECKING:
    from kokoro import KModel
    from kokoro.modules import ProsodyPredictor

# ref_s holds the decoder's style (timbre) first, the predictor's (prosody) second.
_DECODER_STYLE = slice(None, 128)
_PROSODY_STYLE = slice(128, None)


@dataclass(frozen=True)
class BatchItem:
    # 1-D token ids including the two 0 boundary tokens, as KModel.forward builds them.
    input_ids: torch.Tensor
    # ref_s, (1, 256): the voice pack's row for len(phonemes) - 1.
    style: torch.Tensor
    speed: float
    # This item's random draws; None: torch's global RNG.
    generator: torch.Generator | None = None


@dataclass(frozen=True)
class ItemOutput:
    # 1-D audio of this item only, on the CPU.
    audio: torch.Tensor
    # 1-D, one duration in frames per input id, as KModel.Output.pred_dur.
    pred_dur: torch.Tensor


def forward_one(model: KModel, item: BatchItem) -> ItemOutput:
    """KModel's forward for one input, its randomness drawn from `item.generator`."""
    return forward_batch(model, [item])[0]


def forward_batch(model: KModel, items: Sequence[BatchItem]) -> list[ItemOutput]:
    """Each item's audio and durations, computed in one padded pass."""
    if not items:
        return []
    _check(model, items)
    device = model.device
    with torch.inference_mode():
        token_lengths = torch.tensor([len(item.input_ids) for item in items])
        input_ids = pad_sequence([item.input_ids for item in items], batch_first=True).to(device)
        styles = torch.cat([item.style for item in items]).to(device)
        prosody_style = styles[:, _PROSODY_STYLE]
        # Kokoro's convention: True on padding.
        text_padding = torch.arange(input_ids.shape[1])[None, :] >= token_lengths[:, None]
        text_padding = text_padding.to(device)

        hidden = model.bert(input_ids, attention_mask=(~text_padding).int())
        bert_features = model.bert_encoder(hidden).transpose(-1, -2)
        prosody = model.predictor.text_encoder(
            bert_features, prosody_style, token_lengths, text_padding
        )
        durations = _durations(model, prosody, token_lengths, [item.speed for item in items])
        frame_lengths = torch.stack([duration.sum() for duration in durations]).cpu()
        frames_token = pad_sequence(
            [
                torch.repeat_interleave(torch.arange(len(duration), device=device), duration)
                for duration in durations
            ],
            batch_first=True,
        )
        frame_mask = own_steps(frame_lengths, frames_token.shape[1], device)

        aligned_prosody = _align(prosody.transpose(-1, -2), frames_token, frame_mask)
        f0_curve, noise_curve = _f0_and_noise(
            model.predictor, aligned_prosody, prosody_style, frame_lengths
        )
        text = model.text_encoder(input_ids, token_lengths, text_padding)
        audio = decode(
            model.decoder,
            _align(text, frames_token, frame_mask),
            f0_curve,
            noise_curve,
            styles[:, _DECODER_STYLE],
            frame_lengths,
            [item.generator for item in items],
        )
    return [
        ItemOutput(audio=samples.cpu(), pred_dur=duration.cpu())
        for samples, duration in zip(audio, durations, strict=True)
    ]


def _check(model: KModel, items: Sequence[BatchItem]) -> None:
    if model.training:
        raise ValueError("forward_batch needs model.eval(): dropout would differ per item")
    for item in items:
        if item.input_ids.dim() != 1 or len(item.input_ids) > model.context_length:
            raise ValueError(
                f"input_ids must be 1-D, at most {model.context_length} ids with both boundary "
                f"tokens; got shape {tuple(item.input_ids.shape)}"
            )
        if item.style.dim() != 2 or item.style.shape[0] != 1:
            raise ValueError(f"style must be (1, 256); got {tuple(item.style.shape)}")


def _durations(
    model: KModel, prosody: torch.Tensor, token_lengths: torch.Tensor, speeds: Sequence[float]
) -> list[torch.Tensor]:
    """Each item's frames per token, rounded at its own speed as KModel rounds them."""
    hidden = packed_lstm(model.predictor.lstm, prosody, token_lengths)
    sums = torch.sigmoid(model.predictor.duration_proj(hidden)).sum(dim=-1)
    return [
        torch.round(sums[item, :length] / speed).clamp(min=1).long()
        for item, (length, speed) in enumerate(zip(token_lengths.tolist(), speeds, strict=True))
    ]


def _align(features: torch.Tensor, frames_token: torch.Tensor, frame_mask: Mask) -> torch.Tensor:
    """(B, C, frames): each frame takes its token's features, padded frames zero.

    KModel multiplies by a one-hot alignment matrix instead; a gather picks the same values.
    """
    index = frames_token[:, None, :].expand(-1, features.shape[1], -1)
    return zero_padding(features.gather(2, index), frame_mask)


def _f0_and_noise(
    predictor: ProsodyPredictor,
    aligned: torch.Tensor,
    style: torch.Tensor,
    frame_lengths: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ProsodyPredictor.F0Ntrain: the (B, 2 x frames) F0 and noise curves."""
    device = aligned.device
    width = aligned.shape[-1]
    frames = own_steps(frame_lengths, width, device)
    doubled = own_steps(2 * frame_lengths, 2 * width, device)
    shared = packed_lstm(predictor.shared, aligned.transpose(-1, -2), frame_lengths)
    curves = []
    for blocks, projection in ((predictor.F0, predictor.F0_proj), (predictor.N, predictor.N_proj)):
        x = shared.transpose(-1, -2)
        mask = frames
        for block in blocks:
            mask_out = doubled if block.upsample_type != "none" else mask
            x = adain_res_block(block, x, style, mask, mask_out)
            mask = mask_out
        curves.append(projection(x).squeeze(1))
    return curves[0], curves[1]
