"""The vocoder's harmonic source over a padded batch, each item's as if it ran alone.

Kokoro's SineGen draws the harmonics' initial phases (torch.rand) and their noise (torch.randn)
from torch's global RNG in shapes set by the whole batch; it interpolates its phase up from one
value per F0 step, and the source signal's STFT reflects at the signal's end. Padded, an item's
last samples would read the padding in both. So here:
- with no item holding a generator (production), each kind of draw is one call for the whole
  batch; otherwise each item draws from its own generator in its own shapes, so that its numbers
  are the same in any batch (tests);
- past an item's last F0 step its phase holds the last value, which is what the interpolation's
  clamp at the signal's end reads alone;
- the samples just past an item's end are its reflection, which is what the STFT's own padding
  gives the item alone.
A batch of one without generators draws from the global RNG in KModel's order and shapes: the
result is KModel's, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from services.synth.engine.masked_layers import Mask, Steps, own_steps, zero_padding

if TYPE_CHECKING:
    from kokoro.istftnet import Generator, SineGen, SourceModuleHnNSF, TorchSTFT

# An empty (items, steps, ...) tensor on a device, laid out in memory as KModel's draw is.
Blank = Callable[[int, int, torch.device], torch.Tensor]


def harmonic_spectrum(
    generator: Generator,
    f0_curve: torch.Tensor,
    curve_lengths: torch.Tensor,
    rngs: Sequence[torch.Generator | None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (B, n_fft + 2, frames) magnitude and phase the vocoder mixes in, as Generator.forward
    computes them from (B, T) F0 curves, zero past each item's STFT frames; and those frame
    counts (on the CPU). Item b's curve is its first `curve_lengths[b]` steps (CPU)."""
    device = f0_curve.device
    f0 = generator.f0_upsamp(f0_curve[:, None]).transpose(1, 2)
    sample_lengths = curve_lengths * (f0.shape[1] // f0_curve.shape[1])
    curve_steps = own_steps(curve_lengths, f0_curve.shape[1], device)
    source = _merged_source(generator.m_source, f0, curve_steps, sample_lengths, rngs)
    source = source.transpose(1, 2).squeeze(1)
    stft = generator.stft
    samples = own_steps(sample_lengths, source.shape[-1], device)
    if samples is not None:
        source = _reflected_ends(source, samples)
    magnitude, phase = _transform(stft, source)
    frame_lengths = sample_lengths // stft.hop_length + 1
    frames = own_steps(frame_lengths, magnitude.shape[-1], device)
    return zero_padding(torch.cat([magnitude, phase], dim=1), frames), frame_lengths


def _transform(stft: TorchSTFT, signal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TorchSTFT.transform, with its window copied to the GPU without waiting for the queue."""
    window = stft.window.to(signal.device, non_blocking=True)
    spectrum = torch.stft(
        signal, stft.filter_length, stft.hop_length, stft.win_length, window, return_complex=True
    )
    return torch.abs(spectrum), torch.angle(spectrum)


def _reflected_ends(source: torch.Tensor, samples: Steps) -> torch.Tensor:
    """(B, N) `source` with each item's samples past its end its reflection there
    (x[n + k] = x[n - 2 - k]), as torch.stft pads a signal that ends at n. Only the first
    n_fft // 2 are read, and every item but the longest has that many padded samples at least."""
    positions = torch.arange(source.shape[-1], device=source.device)
    ends = samples.counts[:, 0]
    reflected = (2 * ends - 2 - positions).clamp(min=0)
    return source.gather(1, torch.where(positions < ends, positions, reflected))


def _merged_source(
    module: SourceModuleHnNSF,
    f0: torch.Tensor,
    curve_steps: Mask,
    sample_lengths: torch.Tensor,
    rngs: Sequence[torch.Generator | None],
) -> torch.Tensor:
    sines = _sine_waves(module.l_sin_gen, f0, curve_steps, sample_lengths, rngs)
    merged = module.l_tanh(module.l_linear(sines))
    # KModel also draws a noise branch that the vocoder never uses; drawing it too leaves the RNG
    # where KModel leaves it, so calls in sequence stay in step with KModel's.
    _draw(_rows_blank, rngs, sample_lengths.tolist(), f0.shape[1], f0.device, normal=True)
    return merged


def _sine_waves(
    sine_gen: SineGen,
    f0: torch.Tensor,
    curve_steps: Mask,
    sample_lengths: torch.Tensor,
    rngs: Sequence[torch.Generator | None],
) -> torch.Tensor:
    """SineGen.forward over (B, N, 1) upsampled F0 (Kokoro's SineGen has no pulse mode)."""
    assert not sine_gen.flag_for_pulse
    device, harmonics = f0.device, sine_gen.dim
    overtones = torch.tensor([[range(1, sine_gen.harmonic_num + 2)]], dtype=torch.float32)
    overtones = overtones.to(device, non_blocking=True)
    rad_values = (torch.multiply(f0, overtones) / sine_gen.sampling_rate) % 1
    initial_phase = _draw(
        _rows_blank, rngs, [harmonics] * len(rngs), harmonics, device, normal=False
    )
    initial_phase[:, 0] = 0
    rad_values[:, 0, :] = rad_values[:, 0, :] + initial_phase
    scale = sine_gen.upsample_scale
    rad_values = F.interpolate(
        rad_values.transpose(1, 2), scale_factor=1 / scale, mode="linear"
    ).transpose(1, 2)
    phase = torch.cumsum(rad_values, dim=1) * 2 * torch.pi
    if curve_steps is not None:
        last = phase.gather(1, (curve_steps.counts - 1).expand(-1, -1, harmonics))
        phase = torch.where(curve_steps.mask.transpose(1, 2), phase, last)
    phase = F.interpolate(
        phase.transpose(1, 2) * scale, scale_factor=scale, mode="linear"
    ).transpose(1, 2)
    sines = torch.sin(phase) * sine_gen.sine_amp
    voiced = (f0 > sine_gen.voiced_threshold).type(torch.float32)
    noise_amp = voiced * sine_gen.noise_std + (1 - voiced) * sine_gen.sine_amp / 3

    def harmonics_blank(items: int, steps: int, device: torch.device) -> torch.Tensor:
        # torch.randn_like fills KModel's sines, a transposed view, harmonic by harmonic.
        return torch.empty(items, harmonics, steps, device=device).transpose(1, 2)

    noise = _draw(harmonics_blank, rngs, sample_lengths.tolist(), f0.shape[1], device, normal=True)
    return sines * voiced + noise_amp * noise


def _rows_blank(items: int, steps: int, device: torch.device) -> torch.Tensor:
    # KModel's initial phases, (1, harmonics), and its unused noise, (1, N, 1), are contiguous:
    # the same numbers in this shape.
    return torch.empty(items, steps, device=device)


def _draw(
    blank: Blank,
    rngs: Sequence[torch.Generator | None],
    lengths: Sequence[int],
    width: int,
    device: torch.device,
    *,
    normal: bool,
) -> torch.Tensor:
    """Standard normal or uniform [0, 1) numbers in `blank(B, width)`'s shape, on `device`.

    With no generators, one draw from torch's global RNG. Otherwise item b's first `lengths[b]`
    steps are drawn from its own generator (the global RNG where it has none) on the
    generator's device, in the shape and memory order the item alone has; zero past them.
    """
    if all(rng is None for rng in rngs):
        return _fill(blank(len(rngs), width, device), None, normal=normal)
    drawn = blank(len(rngs), width, device).zero_()
    for item, (rng, length) in enumerate(zip(rngs, lengths, strict=True)):
        own = blank(1, length, device if rng is None else rng.device)
        drawn[item, :length] = _fill(own, rng, normal=normal)[0]
    return drawn


def _fill(blank: torch.Tensor, rng: torch.Generator | None, *, normal: bool) -> torch.Tensor:
    # In place on the blank: its memory order decides which step gets which number.
    return blank.normal_(generator=rng) if normal else blank.uniform_(generator=rng)
