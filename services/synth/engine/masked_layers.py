"""Kokoro's time-dependent layers over a padded batch, each item computed as if it were alone.

Padding a batch to its longest item changes three things an item alone would not see:
- instance norms (AdaIN) average over time, so padded steps would shift every item's statistics:
  each item's mean and variance are taken over its own steps only;
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
module's own forward, unchanged. Each function launches the same kernels whatever the batch
size: on a GPU, where short inputs cost mostly kernel launches, a batch pays them once.
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
    # The lengths again, (B, 1, 1) on the batch's device: what a norm divides its sums by.
    counts: torch.Tensor
    # (B, 1, T), True on an item's own steps.
    mask: torch.Tensor
    # The mask as 1.0 and 0.0: a product zeroes padding faster than a select on the CPU.
    as_factor: torch.Tensor


# None: no item is padded at that length.
Mask = Steps | None


def own_steps(lengths: torch.Tensor, width: int, device: torch.device) -> Mask:
    """The steps of a (B, C, width) batch that belong to its items, or None if all do."""
    if bool((lengths == width).all()):
        return None
    # Not blocking: a blocking copy to a GPU waits for every kernel queued before it.
    counts = lengths.to(device, non_blocking=True)[:, None, None]
    mask = torch.arange(width, device=device) < counts
    return Steps(lengths=tuple(lengths.tolist()), counts=counts, mask=mask, as_factor=mask.float())


def zero_padding(x: torch.Tensor, mask: Mask) -> torch.Tensor:
    # A select, not a product: a padded step holding inf would turn into NaN under `* 0`.
    return x if mask is None else torch.where(mask.mask, x, 0.0)


def adain(layer: AdaIN1d, x: torch.Tensor, style: torch.Tensor, mask: Mask) -> torch.Tensor:
    """AdaIN1d, each item normalised over its own steps; zero on padded steps.

    The module's InstanceNorm1d (biased variance, its eps, its affine weight and bias when it
    has them) and style scale and shift, for the whole batch at once.
    """
    if mask is None:
        return layer(x, style)
    norm = layer.norm
    # In eval mode running statistics would replace the item's own: Kokoro keeps none.
    assert not norm.track_running_stats
    gamma, beta = layer.fc(style)[:, :, None].chunk(2, dim=1)
    # Products, not selects, zero the padding here: what reaches a norm past an item's end is a
    # convolution's output over finite values, never inf, so nothing turns into NaN.
    own = mask.as_factor
    mean = (x * own).sum(dim=-1, keepdim=True) / mask.counts
    # The variance from the centred steps, as torch's instance norm takes it: a sum of squares
    # less the squared mean would lose the digits the unbatched statistics keep.
    centred = (x - mean) * own
    variance = torch.linalg.vecdot(centred, centred)[:, :, None] / mask.counts
    styled = 1 + gamma
    scale = styled * torch.rsqrt(variance + norm.eps)
    shift = beta
    if norm.affine:
        scale = scale * norm.weight[:, None]
        shift = torch.addcmul(beta, styled, norm.bias[:, None])
    return torch.addcmul(shift, centred, scale) * own


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
    """The LSTM's outputs for (B, T, C) `x`, each item's sequence `lengths[b]` steps long (CPU).

    Padded steps come out zero.
    """
    if bool((lengths == x.shape[1]).all()):
        output, _ = lstm(x)
        return output
    # Sorted here rather than by pack_padded_sequence, which copies its order to the GPU and
    # back blocking (each a wait for the queue); these copies do not block.
    order = torch.argsort(lengths, descending=True, stable=True)
    to_sorted = order.to(x.device, non_blocking=True)
    from_sorted = torch.argsort(order).to(x.device, non_blocking=True)
    packed = pack_padded_sequence(x.index_select(0, to_sorted), lengths[order], batch_first=True)
    output, _ = lstm(packed)
    padded, _ = pad_packed_sequence(output, batch_first=True, total_length=x.shape[1])
    return padded.index_select(0, from_sorted)


def conv_lengths(conv: nn.Conv1d, lengths: torch.Tensor) -> torch.Tensor:
    """How many steps `conv` makes of inputs `lengths` steps long."""
    padding, dilation = int(conv.padding[0]), conv.dilation[0]
    return (lengths + 2 * padding - dilation * (conv.kernel_size[0] - 1) - 1) // conv.stride[0] + 1


def transposed_conv_lengths(conv: nn.ConvTranspose1d, lengths: torch.Tensor) -> torch.Tensor:
    """How many steps the transposed `conv` makes of inputs `lengths` steps long."""
    padding, dilation = int(conv.padding[0]), conv.dilation[0]
    spread = dilation * (conv.kernel_size[0] - 1) + conv.output_padding[0] + 1
    return (lengths - 1) * conv.stride[0] - 2 * padding + spread
