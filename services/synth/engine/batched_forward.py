"""Several Kokoro inputs in one padded forward pass, each item's output as if it ran alone.

`forward_batch` runs KModel.forward_with_tokens' stages on inputs padded to the longest one:
- ALBERT attends to each item's own tokens only (attention mask); the text encoders already
  take lengths and masks, and every other LSTM (the duration LSTM over tokens, the F0/N `shared`
  LSTM over frames) runs packed to each item's length;
- durations are rounded per item at the item's own speed, and each item's frames are aligned to
  its own tokens; frames are padded to the longest item's;
- the F0/N blocks and the decoder normalise and convolve under masks (`masked_layers`,
  `batched_decoder`); the harmonic source draws its random numbers for the whole batch at once,
  or each item from its own generator in its own shapes where items have one.
Past the text, the only values read back to the host are the durations, once: every later length
is computed from them on the CPU, so a GPU's queue is not drained in the middle of the pass.

`forward_one` is the unbatched reference: a batch of one pads nothing, so every layer runs its
module's own forward and the result is KModel's (with `generator=None`, its exact draws too).
The model must be in eval mode: dropout would make no two runs agree.

On a 2-core CPU batching does not pay (bench/batched_forward_bench.py): with 6% padding, a batch
of 8 speaks 0.58 to 0.62 times as fast as its items one by one. The vocoder's tensors outgrow the
cache, and its many element-wise passes run at memory speed; the masked norms make more of those
passes than torch's instance norm did item by item (0.65 then). What a batch buys is on a GPU:
its kernel launches stay near one item's (bench/batched_forward_ops.py: about 2,540 for 8 items
and 2,640 for 32, where norms and vocoder item by item launched 7,490 and 26,590).
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
        input_ids = pad_sequence([item.input_ids for item in items], batch_first=True)
        input_ids = input_ids.to(device, non_blocking=True)
        styles = torch.cat([item.style for item in items]).to(device, non_blocking=True)
        prosody_style = styles[:, _PROSODY_STYLE]
        # Kokoro's convention: True on padding.
        text_padding = torch.arange(input_ids.shape[1])[None, :] >= token_lengths[:, None]
        text_padding = text_padding.to(device, non_blocking=True)

        hidden = model.bert(input_ids, attention_mask=(~text_padding).int())
        bert_features = model.bert_encoder(hidden).transpose(-1, -2)
        prosody = model.predictor.text_encoder(
            bert_features, prosody_style, token_lengths, text_padding
        )
        # Before the durations' wait: Kokoro's text encoder waits for the GPU itself (its packed
        # LSTM), better here than in the middle of the frames' work.
        text = model.text_encoder(input_ids, token_lengths, text_padding)
        speeds = torch.tensor([[item.speed] for item in items])
        durations = _durations(
            model, prosody, token_lengths, text_padding, speeds.to(device, non_blocking=True)
        )
        # The frame counts set every later shape: the pass's one wait for the GPU.
        durations_cpu = durations.cpu()
        frame_lengths = durations_cpu.sum(dim=1)
        width = int(frame_lengths.max())
        frames_token = _frames_token(durations, width)
        frame_mask = own_steps(frame_lengths, width, device)

        aligned_prosody = _align(prosody.transpose(-1, -2), frames_token, frame_mask)
        f0_curve, noise_curve = _f0_and_noise(
            model.predictor, aligned_prosody, prosody_style, frame_lengths
        )
        audio, sample_lengths = decode(
            model.decoder,
            _align(text, frames_token, frame_mask),
            f0_curve,
            noise_curve,
            styles[:, _DECODER_STYLE],
            frame_lengths,
            [item.generator for item in items],
        )
        audio = audio.cpu()
    # Clones, so that an item's audio does not keep the whole batch's alive.
    return [
        ItemOutput(audio=audio[item, :samples].clone(), pred_dur=durations_cpu[item, :tokens])
        for item, (samples, tokens) in enumerate(
            zip(sample_lengths.tolist(), token_lengths.tolist(), strict=True)
        )
    ]


def _check(model: KModel, items: Sequence[BatchItem]) -> None:
    from kokoro.istftnet import TorchSTFT

    if model.training:
        raise ValueError("forward_batch needs model.eval(): dropout would differ per item")
    if not isinstance(model.decoder.generator.stft, TorchSTFT):
        raise ValueError("forward_batch needs KModel's complex STFT (disable_complex=False)")
    for item in items:
        if item.input_ids.dim() != 1 or len(item.input_ids) > model.context_length:
            raise ValueError(
                f"input_ids must be 1-D, at most {model.context_length} ids with both boundary "
                f"tokens; got shape {tuple(item.input_ids.shape)}"
            )
        if item.style.dim() != 2 or item.style.shape[0] != 1:
            raise ValueError(f"style must be (1, 256); got {tuple(item.style.shape)}")


def _durations(
    model: KModel,
    prosody: torch.Tensor,
    token_lengths: torch.Tensor,
    text_padding: torch.Tensor,
    speeds: torch.Tensor,
) -> torch.Tensor:
    """(B, tokens): each item's frames per token, rounded at its own speed as KModel rounds
    them; zero past its tokens. `speeds` is (B, 1) float32: KModel's float speed meets float32
    sums as float32 too."""
    hidden = packed_lstm(model.predictor.lstm, prosody, token_lengths)
    sums = torch.sigmoid(model.predictor.duration_proj(hidden)).sum(dim=-1)
    rounded = torch.round(sums / speeds).clamp(min=1).long()
    return torch.where(text_padding, 0, rounded)


def _frames_token(durations: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width): the token each frame speaks, as KModel's repeat_interleave of token indices
    by their durations assigns it; past an item's frames, the batch's last (masked later)."""
    ends = durations.cumsum(dim=1)
    frames = torch.arange(width, device=durations.device).repeat(len(durations), 1)
    # A frame's token is the first whose end lies after it.
    token = torch.searchsorted(ends, frames, right=True)
    return token.clamp(max=durations.shape[1] - 1)


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
