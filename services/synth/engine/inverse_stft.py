"""The vocoder's last step, its inverse STFT, over a padded batch of spectra.

torch.istft divides the overlapped frames by the overlapped squared window, one envelope for the
whole batch: the frames after an item's last (padding, however zeroed) would still count in the
envelope of its final samples. Padded batches are therefore inverted here step by step as
torch.istft does (inverse FFT, window, overlap-add, trim the centring), each item divided by the
envelope of its own frames. An unpadded batch goes to torch.istft as KModel calls it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from services.synth.engine.masked_layers import Mask

if TYPE_CHECKING:
    from kokoro.istftnet import TorchSTFT

# torch.istft refuses envelopes below this; past an item's end the envelope is zero.
_SMALLEST_ENVELOPE = 1e-11


def inverse_stft(stft: TorchSTFT, x: torch.Tensor, frames: Mask) -> torch.Tensor:
    """(B, samples) audio from conv_post's (B, n_fft + 2, frames) output, as Generator.forward
    ends: item b's first hop x (its frames - 1) samples are its audio."""
    bins = stft.filter_length // 2 + 1
    magnitude = torch.exp(x[:, :bins, :])
    phase = torch.sin(x[:, bins:, :])
    # Not blocking: a blocking copy to a GPU waits for every kernel queued before it.
    window = stft.window.to(x.device, non_blocking=True)
    n_fft, hop = stft.filter_length, stft.hop_length
    if frames is None:
        spectrum = magnitude * torch.exp(phase * 1j)
        return torch.istft(spectrum, n_fft, hop, stft.win_length, window)
    assert stft.win_length == n_fft, "a shorter window would need centring in the frame"
    spectrum = torch.where(frames.mask, magnitude, 0.0) * torch.exp(phase * 1j)
    segments = torch.fft.irfft(spectrum, n=n_fft, dim=1) * window[:, None]
    width = n_fft + hop * (x.shape[-1] - 1)
    overlapped = _overlap_add(segments, width, hop)
    envelope = _overlap_add(window.square()[:, None] * frames.mask, width, hop)
    # torch.istft's centring: n_fft // 2 samples of reflection at either end.
    own = slice(n_fft // 2, width - n_fft // 2)
    return overlapped[:, own] / envelope[:, own].clamp(min=_SMALLEST_ENVELOPE)


def _overlap_add(segments: torch.Tensor, width: int, hop: int) -> torch.Tensor:
    """(B, width): (B, n_fft, frames) segments summed where they overlap, `hop` apart."""
    n_fft = segments.shape[1]
    summed = F.fold(segments, output_size=(1, width), kernel_size=(1, n_fft), stride=(1, hop))
    return summed[:, 0, 0, :]
