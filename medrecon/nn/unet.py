"""A conditional diffusion U-Net for 2D slices and 3D volumes (``spatial_dims`` picks the convolutions).

The network is the ``F_theta`` of EDM (Karras et al. 2022): it maps an input that already holds the noisy
image and the condition channels, plus a noise-level input ``c_noise``, to the raw network output.
Preconditioning (``medrecon.diffusion.precond.EDMPrecond``) scales the inputs and outputs and concatenates the
condition, so the network knows nothing about noise schedules.

Conditioning on the measurement is by channel concatenation (SR3 / Palette); ``in_channels`` counts both::

    in_channels = image_channels + cond_channels
    cond_channels = task.cond_channels * context_slices     # 2.5D: k neighbouring degraded slices stacked

so 2.5D context needs no change to the network, only more input channels (the data layer stacks the slices).

Architecture (ADM / DDPM++ family, kept small): a stem convolution; per resolution level ``num_res_blocks``
GroupNorm-SiLU residual blocks whose second normalisation is modulated by the noise embedding (scale and
shift, "adaptive GroupNorm"), self-attention after each block only on the levels flagged in
``attention_levels`` (use it at the low resolutions; attention cost grows with the square of the number of
voxels); strided-convolution (or average-pool) downsampling, nearest-neighbour + convolution upsampling, one
skip connection per level; and a zero-initialised output convolution, so an untrained network outputs zeros
and the preconditioned denoiser starts at ``c_skip * x``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DOWNSAMPLE_MODES = ("conv", "avgpool")


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """The number of scalar parameters of ``module`` (only ``requires_grad`` ones if ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _conv(spatial_dims: int, c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Module:
    conv_cls = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    return conv_cls(c_in, c_out, kernel, stride=stride, padding=kernel // 2)


def _group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    # the largest group count <= max_groups that divides the channels, so any channel count is accepted
    groups = max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """``x`` ``(B, C, *S)`` padded at the far end of every spatial axis, by edge replication, to sizes that are
    multiples of ``multiple`` (unchanged when they already are); crop the output back with
    ``out[(..., *(slice(0, s) for s in S))]``."""
    pad = [(-s) % multiple for s in x.shape[2:]]
    if not any(pad):
        return x
    # F.pad lists the last dimension first; pad only at the far end so cropping is a plain slice
    return F.pad(x, [v for p in reversed(pad) for v in (0, p)], mode="replicate")


def check_levels(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    channels: Sequence[int],
    attention_levels: Sequence[bool],
    num_res_blocks: int,
) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """The level options every U-Net of ``medrecon.nn`` shares, checked: ``(channels, attention_levels)`` as
    tuples. Raises ``ValueError`` naming the option for anything out of range (before any layer is built)."""
    channels = tuple(int(c) for c in channels)
    attention_levels = tuple(bool(a) for a in attention_levels)
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if int(in_channels) < 1 or int(out_channels) < 1:
        raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels!r}, {out_channels!r}")
    if not channels or min(channels) < 1:
        raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels!r}")
    if len(attention_levels) != len(channels):
        raise ValueError(
            f"attention_levels needs one flag per level ({len(channels)}), got {attention_levels!r}"
        )
    if int(num_res_blocks) < 1:
        raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks!r}")
    return channels, attention_levels


def checked_input(x: Tensor, c_noise: Tensor | float, spatial_dims: int, in_channels: int) -> Tensor:
    """``c_noise`` as ``(B,)`` on ``x``'s device, after checking that ``x`` is ``(B, in_channels, *S)`` with
    ``len(S) == spatial_dims`` (``ValueError`` naming the expected shape otherwise)."""
    if x.ndim != spatial_dims + 2 or x.shape[1] != in_channels:
        raise ValueError(
            f"expected x of shape (B, {in_channels}, {spatial_dims} spatial sizes), got {tuple(x.shape)}"
        )
    return torch.as_tensor(c_noise, device=x.device).reshape(-1).expand(x.shape[0])


def _zero_(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class NoiseEmbedding(nn.Module):
    """``c_noise`` (B,) -> sinusoidal features -> MLP -> (B, emb_dim).

    The features are EDM's DDPM++ positional embedding: ``cos`` and ``sin`` of ``c_noise`` times frequencies
    spaced geometrically from 1 down to ``1 / max_positions``. With EDM's ``c_noise = ln(sigma) / 4`` the
    input spans about [-1.6, 1.1] for sigma in [0.002, 80].
    """

    def __init__(self, num_features: int, emb_dim: int, max_positions: float = 10_000.0) -> None:
        super().__init__()
        half = num_features // 2
        freqs = (1.0 / max_positions) ** (torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(
            nn.Linear(2 * half, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim), nn.SiLU()
        )

    def forward(self, c_noise: Tensor) -> Tensor:
        arg = c_noise.float()[:, None] * self.freqs[None, :]
        return self.mlp(torch.cat([arg.cos(), arg.sin()], dim=1))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the second normalisation modulated by the noise embedding (FiLM / adaGN)."""

    def __init__(self, spatial_dims: int, c_in: int, c_out: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _group_norm(c_in)
        self.conv1 = _conv(spatial_dims, c_in, c_out, 3)
        self.affine = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = _group_norm(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero_(_conv(spatial_dims, c_out, c_out, 3))
        self.skip = _conv(spatial_dims, c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.affine(emb).unflatten(1, (2, -1)).unbind(1)  # (B, c_out) each
        view = (*scale.shape, *([1] * (h.ndim - 2)))
        h = self.norm2(h) * (1 + scale.reshape(view)) + shift.reshape(view)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over all voxels through ``scaled_dot_product_attention`` (flash on GPUs)."""

    def __init__(self, spatial_dims: int, channels: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = _group_norm(channels)
        self.qkv = _conv(spatial_dims, channels, 3 * channels, 1)
        self.proj = _zero_(_conv(spatial_dims, channels, channels, 1))

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        b, c, *spatial = x.shape
        # (B, 3C, *S) -> (B, N, 3C) -> (3, B, heads, N, head_dim): the head dimension is the contiguous one,
        # which the flash kernel wants (free when the activations are channels_last)
        qkv = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).contiguous()
        q, k, v = qkv.reshape(b, -1, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, head_dim)
        out = out.transpose(1, 2).reshape(b, -1, c).transpose(1, 2).reshape(b, c, *spatial)
        return x + self.proj(out)


class _Level(nn.Module):
    """The blocks of one resolution level, plus an optional resampling layer."""

    def __init__(self, blocks: list[nn.Module], resample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample

    def run_blocks(self, h: Tensor, emb: Tensor) -> Tensor:
        for block in self.blocks:
            h = block(h, emb)
        return h


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3-wide convolution (no checkerboard artefacts)."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.conv = _conv(spatial_dims, channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """Conditional diffusion U-Net, ``net(x, c_noise) -> (B, out_channels, *S)``.

    Args:
        spatial_dims: 2 (slices) or 3 (volumes / patches).
        in_channels: channels of ``x``: ``image_channels + cond_channels`` (see the module docstring for
            2.5D).
        out_channels: channels of the output, usually ``image_channels``.
        channels: feature channels per resolution level; the number of levels is ``len(channels)`` and inputs
            are downsampled ``len(channels) - 1`` times.
        num_res_blocks: residual blocks per level (encoder and decoder each).
        attention_levels: one flag per level: self-attention after each residual block of that level (and in
            the bottleneck when the last level is flagged).
        num_heads: attention heads; must divide the channels of every flagged level.
        dropout: dropout probability inside the residual blocks, in [0, 1).
        emb_dim: width of the noise embedding; default ``4 * channels[0]``.
        downsample: ``"conv"`` (stride-2 convolution) or ``"avgpool"``.

    Any spatial size is accepted: inputs whose sizes are not multiples of ``2 ** (len(channels) - 1)`` are
    padded at the far end by edge replication inside ``forward`` and the output is cropped back.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (32, 64, 128),
        num_res_blocks: int = 1,
        attention_levels: Sequence[bool] = (False, False, True),
        num_heads: int = 4,
        dropout: float = 0.0,
        emb_dim: int | None = None,
        downsample: str = "conv",
    ) -> None:
        super().__init__()
        channels, attention_levels = check_levels(
            spatial_dims, in_channels, out_channels, channels, attention_levels, num_res_blocks
        )
        if int(num_heads) < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads!r}")
        for ch, att in zip(channels, attention_levels):
            if att and ch % num_heads:
                raise ValueError(
                    f"num_heads={num_heads!r} must divide the channels {ch} of every attention level"
                )
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if emb_dim is not None and int(emb_dim) < 1:
            raise ValueError(f"emb_dim must be >= 1 (or None for 4 * channels[0]), got {emb_dim!r}")
        if downsample not in DOWNSAMPLE_MODES:
            raise ValueError(f"downsample must be one of {DOWNSAMPLE_MODES}, got {downsample!r}")

        self.spatial_dims = int(spatial_dims)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.channels = channels
        self.size_multiple = 2 ** (len(channels) - 1)
        emb_dim = int(emb_dim) if emb_dim is not None else 4 * channels[0]
        sd, nrb = self.spatial_dims, int(num_res_blocks)

        def blocks(c_in: int, c_out: int, attend: bool) -> list[nn.Module]:
            out: list[nn.Module] = []
            for i in range(nrb):
                out.append(ResBlock(sd, c_in if i == 0 else c_out, c_out, emb_dim, dropout))
                if attend:
                    out.append(SelfAttention(sd, c_out, num_heads))
            return out

        def down(ch: int) -> nn.Module:
            if downsample == "conv":
                return _conv(sd, ch, ch, 3, stride=2)
            return (nn.AvgPool2d if sd == 2 else nn.AvgPool3d)(2)

        self.embed = NoiseEmbedding(max(4, 2 * (channels[0] // 2)), emb_dim)
        self.stem = _conv(sd, self.in_channels, channels[0], 3)
        self.encoder = nn.ModuleList()
        prev = channels[0]
        last = len(channels) - 1
        for i, (ch, att) in enumerate(zip(channels, attention_levels)):
            self.encoder.append(_Level(blocks(prev, ch, att), down(ch) if i < last else None))
            prev = ch
        mid: list[nn.Module] = [ResBlock(sd, prev, prev, emb_dim, dropout)]
        if attention_levels[-1]:
            mid.append(SelfAttention(sd, prev, num_heads))
        mid.append(ResBlock(sd, prev, prev, emb_dim, dropout))
        self.middle = _Level(mid, None)
        self.decoder = nn.ModuleList()
        for i in reversed(range(len(channels))):
            ch, att = channels[i], attention_levels[i]
            # resample here is the upsampling applied *before* the level's blocks
            self.decoder.append(_Level(blocks(prev + ch, ch, att), Upsample(sd, prev) if i < last else None))
            prev = ch
        self.out_norm = _group_norm(prev)
        self.out_conv = _zero_(_conv(sd, prev, self.out_channels, 3))

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        """Args:
            x: ``(B, in_channels, *S)``, ``len(S) == spatial_dims``, any sizes.
            c_noise: ``(B,)`` (or a scalar) noise-level input, EDM's ``ln(sigma) / 4``.

        Returns:
            ``(B, out_channels, *S)``.
        """
        c_noise = checked_input(x, c_noise, self.spatial_dims, self.in_channels)
        size = x.shape[2:]
        x_pad = pad_to_multiple(x, self.size_multiple)

        emb = self.embed(c_noise)
        h = self.stem(x_pad)
        skips = []
        for level in self.encoder:
            h = level.run_blocks(h, emb)
            skips.append(h)
            if level.resample is not None:
                h = level.resample(h)
        h = self.middle.run_blocks(h, emb)
        for level in self.decoder:
            if level.resample is not None:
                h = level.resample(h)
            h = level.run_blocks(torch.cat([h, skips.pop()], dim=1), emb)
        out = self.out_conv(F.silu(self.out_norm(h)))
        if x_pad.shape[2:] != size:
            out = out[(..., *(slice(0, s) for s in size))]
        return out

    def extra_repr(self) -> str:
        return (
            f"spatial_dims={self.spatial_dims}, in_channels={self.in_channels}, "
            f"out_channels={self.out_channels}, channels={self.channels}"
        )


__all__ = ["UNet", "count_parameters", "pad_to_multiple", "DOWNSAMPLE_MODES"]
