"""Kokoro's Decoder (its iSTFTNet vocoder included) over a padded batch of aligned frames.

Decoder.forward and Generator.forward step by step, with `masked_layers` wherever padding would
reach an item's own steps. The time axis changes length on the way (frames, then 2x frames, then
each upsampling, then STFT frames); each item's length is carried along with it and its mask is
made at every length. The harmonic source (`harmonic_source`) and the inverse STFT
(`inverse_stft`) handle the ends of items themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from services.synth.engine.harmonic_source import harmonic_spectrum
from services.synth.engine.inverse_stft import inverse_stft
from services.synth.engine.masked_layers import (
    adain_res_block,
    conv_lengths,
    own_steps,
    snake_res_block,
    transposed_conv_lengths,
    zero_padding,
)

if TYPE_CHECKING:
    from kokoro.istftnet import Decoder, Generator


def decode(
    decoder: Decoder,
    asr: torch.Tensor,
    f0_curve: torch.Tensor,
    noise_curve: torch.Tensor,
    style: torch.Tensor,
    frame_lengths: torch.Tensor,
    rngs: Sequence[torch.Generator | None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, samples) audio from (B, C, frames) aligned text features, (B, 2 x frames) F0 and
    noise curves and (B, 128) decoder styles; and each item's sample count (on the CPU), its
    audio being its first that many samples.

    `frame_lengths` (on the CPU) holds each item's frame count; `rngs` each item's generator.
    """
    device = asr.device
    width = asr.shape[-1]
    frames = own_steps(frame_lengths, width, device)
    doubled = own_steps(2 * frame_lengths, 2 * width, device)
    # Each output frame reads curve steps 2j-1..2j+1: an item's own steps, so no mask here.
    f0 = decoder.F0_conv(f0_curve.unsqueeze(1))
    noise = decoder.N_conv(noise_curve.unsqueeze(1))
    x = torch.cat([asr, f0, noise], dim=1)
    x = adain_res_block(decoder.encode, x, style, frames, frames)
    asr_res = decoder.asr_res(asr)
    res = True
    mask = frames
    for block in decoder.decode:
        if res:
            x = torch.cat([x, asr_res, f0, noise], dim=1)
        upsamples = block.upsample_type != "none"
        mask_out = doubled if upsamples else mask
        x = adain_res_block(block, x, style, mask, mask_out)
        mask = mask_out
        res = res and not upsamples
    return _generate(decoder.generator, x, style, f0_curve, frame_lengths, rngs)


def _generate(
    generator: Generator,
    x: torch.Tensor,
    style: torch.Tensor,
    f0_curve: torch.Tensor,
    frame_lengths: torch.Tensor,
    rngs: Sequence[torch.Generator | None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generator.forward: x at 2 x frames, the audio and each item's sample count out."""
    device = x.device
    # Zeros past each item's STFT frames are what the noise convolutions' padding gives alone.
    har, spectrum_lengths = harmonic_spectrum(generator, f0_curve, 2 * frame_lengths, rngs)
    lengths = 2 * frame_lengths
    last = generator.num_upsamples - 1
    for i in range(generator.num_upsamples):
        x = F.leaky_relu(x, negative_slope=0.1)
        noise_conv = generator.noise_convs[i]
        x_source = noise_conv(har)
        source_lengths = conv_lengths(noise_conv, spectrum_lengths)
        source_mask = own_steps(source_lengths, x_source.shape[-1], device)
        x_source = snake_res_block(generator.noise_res[i], x_source, style, source_mask)
        x = generator.ups[i](zero_padding(x, own_steps(lengths, x.shape[-1], device)))
        lengths = transposed_conv_lengths(generator.ups[i], lengths)
        if i == last:
            # Pads on the left only: the same for every item, whatever its length.
            left, right = generator.reflection_pad.padding
            assert right == 0
            x = generator.reflection_pad(x)
            lengths = lengths + left
        assert torch.equal(lengths, source_lengths), "the upsampling and the source disagree"
        x = x + x_source
        mask = source_mask
        blocks = generator.resblocks[i * generator.num_kernels : (i + 1) * generator.num_kernels]
        xs = snake_res_block(blocks[0], x, style, mask)
        for block in blocks[1:]:
            xs += snake_res_block(block, x, style, mask)
        x = xs / generator.num_kernels
    x = F.leaky_relu(x)
    x = generator.conv_post(zero_padding(x, mask))
    return inverse_stft(generator.stft, x, mask), generator.stft.hop_length * (lengths - 1)
