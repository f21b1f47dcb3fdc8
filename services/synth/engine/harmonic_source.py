"""The vocoder's harmonic source for one item, its random draws from that item's generator.

Kokoro's SineGen draws the harmonics' initial phases (torch.rand) and their noise (torch.randn)
from torch's global RNG in shapes set by the whole batch, and its source signal's STFT reflects
at the signal's end. Computed here for one item at a time, on the item's own frames, both come
out as for the item alone, whatever else is in the batch. With `rng=None` the draws come from
the global RNG in KModel's order and shapes, so the result is KModel's, bit for bit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from kokoro.istftnet import Generator, SineGen, SourceModuleHnNSF


def harmonic_spectrum(
    generator: Generator, f0_curve: torch.Tensor, rng: torch.Generator | None
) -> torch.Tensor:
    """(1, n_fft + 2, frames): the magnitude and phase the vocoder mixes in, as Generator.forward
    computes them from a (1, T) F0 curve."""
    f0 = generator.f0_upsamp(f0_curve[:, None]).transpose(1, 2)
    source = _merged_source(generator.m_source, f0, rng).transpose(1, 2).squeeze(1)
    magnitude, phase = generator.stft.transform(source)
    return torch.cat([magnitude, phase], dim=1)


def _merged_source(
    module: SourceModuleHnNSF, f0: torch.Tensor, rng: torch.Generator | None
) -> torch.Tensor:
    sines = _sine_waves(module.l_sin_gen, f0, rng)
    merged = module.l_tanh(module.l_linear(sines))
    # KModel also draws a noise branch that the vocoder never uses; drawing it too leaves the RNG
    # where KModel leaves it, so calls in sequence stay in step with KModel's.
    _random_like(f0, rng, normal=True)
    return merged


def _sine_waves(sine_gen: SineGen, f0: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
    """SineGen.forward for one item (Kokoro's SineGen has no pulse mode)."""
    assert not sine_gen.flag_for_pulse
    overtones = torch.FloatTensor([[range(1, sine_gen.harmonic_num + 2)]]).to(f0.device)
    rad_values = (torch.multiply(f0, overtones) / sine_gen.sampling_rate) % 1
    initial_phase = _random_like(f0.new_empty(1, sine_gen.dim), rng, normal=False)
    initial_phase[:, 0] = 0
    rad_values[:, 0, :] = rad_values[:, 0, :] + initial_phase
    scale = sine_gen.upsample_scale
    rad_values = F.interpolate(
        rad_values.transpose(1, 2), scale_factor=1 / scale, mode="linear"
    ).transpose(1, 2)
    phase = torch.cumsum(rad_values, dim=1) * 2 * torch.pi
    phase = F.interpolate(
        phase.transpose(1, 2) * scale, scale_factor=scale, mode="linear"
    ).transpose(1, 2)
    sines = torch.sin(phase) * sine_gen.sine_amp
    voiced = (f0 > sine_gen.voiced_threshold).type(torch.float32)
    noise_amp = voiced * sine_gen.noise_std + (1 - voiced) * sine_gen.sine_amp / 3
    noise = noise_amp * _random_like(sines, rng, normal=True)
    return sines * voiced + noise


def _random_like(
    template: torch.Tensor, rng: torch.Generator | None, *, normal: bool
) -> torch.Tensor:
    """Standard normal or uniform [0, 1) numbers shaped like `template`, drawn from `rng` on its
    own device, else from torch's global RNG on the template's device, as KModel draws them.

    Filled in the template's memory order, as torch.randn_like fills: the sines are a transposed
    view, and a fresh contiguous tensor would put the same draws on other samples.
    """
    device = template.device if rng is None else rng.device
    drawn = torch.empty_like(template, device=device)
    if normal:
        drawn.normal_(generator=rng)
    else:
        drawn.uniform_(generator=rng)
    return drawn.to(template.device)
