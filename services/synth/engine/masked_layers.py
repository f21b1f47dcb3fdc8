"""Kokoro's time-dependent layers over a padded batch, each item computed as if it were alone.

Padding a batch to its longest item changes three things an item alone would not see:
- instance norms (AdaIN) average over time, so padded steps would shift every item's statistics:
  each item is normalised by the module itself, over its own steps only;
- convolutions read their neighbours, and alone an item's neighbours past its end are the
  convolution's zero padding: so padded steps are zero wherever a convolution (transposed ones
  included) reads them;
- LSTMs carry state along time, and the backward direction would start in the padding: they run
  packed to each item's length.
AdaIN's output is zero on padded steps, and what follows it before a convolution (LeakyReLU,
Snake) keeps zero at zero, so most convolutions need no zeroing of their own. Layers that act step
by step (1x1 convolutions, activations, nearest upsampling) leave values on padded steps that no
later layer reads.

A mask (`Steps`) holds each item's length and a (B, 1, T) bool tensor, True on an item's own
steps. None means no item is padded at that length, and then every function here runs the
module's own forward, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

if TYPE_CHECKING:
    from kokoro.istftnet import AdaIN1d, AdainResBlk1d, AdaINResBlock1


@dataclass(frozen=True)
class Steps:
    """Each item's own steps along a padded time axis: its first `lengths[b]`."""

    lengths: tuple[int, ...]
    # (B, 1, T), True on an item's own steps.
    mask: torch.Tensor


# None: no item is padded at that length.
Mask = Steps | None


def own_steps(lengths: torch.Tensor, width: int, device: torch.device) -> Mask:
    """The steps of a (B, C, width) batch that belong to its items, or None if all do."""
    if bool((lengths == width).all()):
        return None
    steps = torch.arange(width, device=device)
    mask = (steps[None, :] < lengths.to(device)[:, None])[:, None, :]
    return Steps(lengths=tuple(lengths.tolist()), mask=mask)


def zero_padding(x: torch.Tensor, mask: Mask) -> torch.Tensor:
    # A select, not a product: a padded step holding inf would turn into NaN under `* 0`.
    return x if mask is None else torch.where(mask.mask, x, 0.0)


def adain(layer: AdaIN1d, x: torch.Tensor, style: torch.Tensor, mask: Mask) -> torch.Tensor:
    """AdaIN1d, the module's own, on each item's own steps; zero on padded steps.

    One call per item: torch's instance norm is faster on the CPU than any masked reduction
    tried (torch.var_mean, sums under torch.where), and its statistics are the unbatched ones.
    On a GPU that is a few small kernels per item and norm (about 70 norms): not measured yet.
    """
    if mask is None:
        return layer(x, style)
    normed = torch.empty_like(x)
    for item, length in enumerate(mask.lengths):
        own = x[item : item + 1, :, :length]
        normed[item, :, :length] = layer(own, style[item : item + 1])[0]
        normed[item, :, length:] = 0.0
    return normed


def adain_res_block(
    block: AdainResBlk1d, x: torch.Tensor, style: torch.Tensor, mask_in: Mask, mask_out: Mask
) -> torch.Tensor:
    """AdainResBlk1d (the predictor's F0 and N blocks, the decoder's encode and decode).

    `mask_out` is `mask_in` at twice the length where the block upsamples.
    """
    if mask_in is None and mask_out is None:
        return block(x, style)
    # LeakyReLU keeps AdaIN's zeros, so each convolution reads zeros past an item's end.
    residual = block.actv(adain(block.norm1, x, style, mask_in))
    if block.upsample_type != "none":
        # The transposed convolution reads those zeros too, but puts its bias on the padding.
        residual = zero_padding(block.pool(residual), mask_out)
    residual = block.conv1(residual)
    residual = block.actv(adain(block.norm2, residual, style, mask_out))
    residual = block.conv2(residual)
    # Dropout is left out: it is the identity in eval mode, which forward_batch requires.
    return (residual + block._shortcut(x)) * torch.rsqrt(torch.tensor(2))


def snake_res_block(
    block: AdaINResBlock1, x: torch.Tensor, style: torch.Tensor, mask: Mask
) -> torch.Tensor:
    """AdaINResBlock1, the vocoder's residual blocks with Snake activations.

    Snake (x + sin(a x)^2 / a) keeps AdaIN's zeros, so each convolution reads zeros past an
    item's end.
    """
    if mask is None:
        return block(x, style)
    layers = zip(
        block.convs1,
        block.convs2,
        block.adain1,
        block.adain2,
        block.alpha1,
        block.alpha2,
        strict=True,
    )
    for conv1, conv2, norm1, norm2, alpha1, alpha2 in layers:
        xt = adain(norm1, x, style, mask)
        xt = xt + (1 / alpha1) * (torch.sin(alpha1 * xt) ** 2)
        xt = conv1(xt)
        xt = adain(norm2, xt, style, mask)
        xt = xt + (1 / alpha2) * (torch.sin(alpha2 * xt) ** 2)
        xt = conv2(xt)
        x = xt + x
    return x


def packed_lstm(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The LSTM's outputs for (B, T, C) `x`, each item's sequence `lengths[b]` steps long.

    Padded steps come out zero.
    """
    if bool((lengths == x.shape[1]).all()):
        output, _ = lstm(x)
        return output
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    output, _ = lstm(packed)
    padded, _ = pad_packed_sequence(output, batch_first=True, total_length=x.shape[1])
    return padded


def conv_lengths(conv: nn.Conv1d, lengths: torch.Tensor) -> torch.Tensor:
    """How many steps `conv` makes of inputs `lengths` steps long."""
    padding, dilation = int(conv.padding[0]), conv.dilation[0]
    return (lengths + 2 * padding - dilation * (conv.kernel_size[0] - 1) - 1) // conv.stride[0] + 1


def transposed_conv_lengths(conv: nn.ConvTranspose1d, lengths: torch.Tensor) -> torch.Tensor:
    """How many steps the transposed `conv` makes of inputs `lengths` steps long."""
    padding, dilation = int(conv.padding[0]), conv.dilation[0]
    spread = dilation * (conv.kernel_size[0] - 1) + conv.output_padding[0] + 1
    return (lengths - 1) * conv.stride[0] - 2 * padding + spread
