"""MONAI's ``DiffusionModelUNet`` behind medrecon's network interface ``net(x, c_noise)`` (``model=monai_unet``).

``monai.networks.nets.DiffusionModelUNet`` (Rombach et al. 2022 / Pinaya et al. 2022, MONAI >= 1.4) is called as
``unet(x, timesteps)``, with integer DDPM timesteps in ``0..999`` in MONAI's own pipelines. This adapter gives it
the interface of :class:`medrecon.nn.UNet`, so EDM preconditioning, training, samplers, guidance, checkpoints and
``reconstruct``/``evaluate``/``info`` use it unchanged:

- **condition**: by channel concatenation, as for our U-Net: ``x`` already holds the noisy image and the condition
  channels (``in_channels = image_channels + cond_channels``; ``EDMPrecond`` concatenates), which is MONAI's
  ``DiffusionInferer(mode="concat")`` too. MONAI's cross-attention conditioning (``with_conditioning``) is not
  used: the measurement is an image on the same grid, not a context vector.
- **noise level**: EDM's ``c_noise = ln(sigma) / 4`` (about ``[-1.6, 1.1]`` for sigma in ``[0.002, 80]``) is
  passed as MONAI's float ``timesteps = timestep_scale * c_noise``. MONAI's sinusoidal embedding has frequencies
  from 1 down to 1/10000, laid out for timesteps spread over about a thousand units; the default scale 250
  spreads EDM's sigma range over about 660 of them (``62.5 * ln(sigma)``), so the embedding varies over its
  frequencies as it does in MONAI's own DDPM pipelines (with scale 1 only the highest few frequencies move).
  Negative timesteps are fine: the embedding is ``cos``/``sin`` of ``timesteps * freq``.
- **any spatial size**: MONAI's U-Net needs sizes that are multiples of ``2 ** (len(channels) - 1)``; inputs are
  padded by edge replication at the far end and the output cropped back (``medrecon.nn.unet.pad_to_multiple``),
  as :class:`medrecon.nn.UNet` does.
- **zero output at init**: MONAI zero-initialises its output convolution, so an untrained network outputs zeros
  and the preconditioned denoiser starts at ``c_skip * x``, as with our U-Net.

Weights: the MONAI network is the ``unet`` submodule, so ``adapter.unet`` is a plain ``DiffusionModelUNet``
(``adapter.unet.load_state_dict(monai_state)`` takes the weights of a MONAI model of the same architecture). A
MONAI-trained DDPM predicts epsilon on a discrete schedule from integer timesteps; it is not an EDM denoiser, so
such weights are a starting point for training here, not a model to sample with (docs/training.md).

MONAI's middle block always has self-attention (whatever ``attention_levels`` says), which imports ``einops``:
a dependency of medrecon for that reason.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from medrecon.nn.unet import check_levels, checked_input, pad_to_multiple


class MonaiUNet(nn.Module):
    """MONAI's ``DiffusionModelUNet`` as ``net(x, c_noise) -> (B, out_channels, *S)``.

    Args:
        spatial_dims: 2 (slices) or 3 (volumes / patches).
        in_channels: channels of ``x``: ``image_channels + cond_channels``.
        out_channels: channels of the output, usually ``image_channels``.
        channels: feature channels per resolution level (MONAI's ``channels``); each a multiple of
            ``norm_num_groups``; inputs are downsampled ``len(channels) - 1`` times.
        num_res_blocks: residual blocks per level in the encoder (MONAI's decoder has one more per level).
        attention_levels: one flag per level: self-attention blocks at that level. The middle block has
            self-attention whatever the flags say (MONAI's design).
        num_head_channels: channels per attention head; must divide the channels of every flagged level and of
            the last level (the middle block's attention).
        norm_num_groups: GroupNorm groups; must divide every entry of ``channels``.
        resblock_updown: residual blocks (instead of plain convolutions) for down- and upsampling.
        use_flash_attention: attention through ``torch.nn.functional.scaled_dot_product_attention`` (flash and
            memory-efficient kernels on GPUs); the same parameters either way.
        timestep_scale: ``timesteps = timestep_scale * c_noise`` (see the module docstring), > 0.

    Raises:
        ValueError: an option out of range, or options that do not fit together (naming the values).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (32, 64, 64),
        num_res_blocks: int = 1,
        attention_levels: Sequence[bool] = (False, False, True),
        num_head_channels: int = 16,
        norm_num_groups: int = 32,
        resblock_updown: bool = False,
        use_flash_attention: bool = True,
        timestep_scale: float = 250.0,
    ) -> None:
        super().__init__()
        channels, attention_levels = check_levels(
            spatial_dims, in_channels, out_channels, channels, attention_levels, num_res_blocks
        )
        if int(norm_num_groups) < 1 or any(c % norm_num_groups for c in channels):
            raise ValueError(
                f"norm_num_groups={norm_num_groups!r} must divide every channel count {channels}"
            )
        attended = {c for c, a in zip(channels, attention_levels) if a} | {channels[-1]}
        if int(num_head_channels) < 1 or any(c % num_head_channels for c in attended):
            raise ValueError(
                f"num_head_channels={num_head_channels!r} must divide the channels {sorted(attended)} of every "
                "attention level and of the last level (MONAI's middle block attends)"
            )
        if not float(timestep_scale) > 0:
            raise ValueError(f"timestep_scale must be > 0, got {timestep_scale!r}")

        from monai.networks.nets import DiffusionModelUNet  # about 2 s to import: only when one is built

        self.spatial_dims = int(spatial_dims)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.channels = channels
        self.size_multiple = 2 ** (len(channels) - 1)
        self.timestep_scale = float(timestep_scale)
        self.unet = DiffusionModelUNet(
            spatial_dims=self.spatial_dims,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            num_res_blocks=int(num_res_blocks),
            channels=channels,
            attention_levels=attention_levels,
            norm_num_groups=int(norm_num_groups),
            resblock_updown=bool(resblock_updown),
            num_head_channels=int(num_head_channels),
            use_flash_attention=bool(use_flash_attention),
        )

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
        out = self.unet(x_pad, timesteps=c_noise.float() * self.timestep_scale)
        if x_pad.shape[2:] != size:
            out = out[(..., *(slice(0, s) for s in size))]
        return out

    def extra_repr(self) -> str:
        return (
            f"spatial_dims={self.spatial_dims}, in_channels={self.in_channels}, "
            f"out_channels={self.out_channels}, channels={self.channels}, timestep_scale={self.timestep_scale:g}"
        )


__all__ = ["MonaiUNet"]
