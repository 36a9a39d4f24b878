"""The networks a model spec may name: a closed registry from ``_target_`` strings to medrecon's own classes.

A checkpoint's ``spec.model`` (and ``conf/model/*.yaml``) is ``{"_target_": <name>, <options>}``; the name is
looked up here, never imported (``medrecon.schema``). Shape facts (``spatial_dims``, ``in_channels``,
``out_channels``) come from the spec, not from these options. Bounds are per option; the total size is bounded
separately from the parameter count (``medrecon.checkpoint.MAX_PARAMETERS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from medrecon.nn.unet import DOWNSAMPLE_MODES, UNet
from medrecon.schema import Bool, Buildable, Choice, Float, Int, Seq, resolve

MAX_LEVELS = 8  # resolution levels (len(channels)); unet_base has 4
MAX_CHANNELS = 4096  # feature channels of one level; unet_base's widest is 512

UNET = Buildable(
    load=lambda: UNet,
    options={
        "channels": Seq(Int(1, MAX_CHANNELS), 1, MAX_LEVELS),
        "num_res_blocks": Int(1, 16),
        "attention_levels": Seq(Bool(), 1, MAX_LEVELS),
        "num_heads": Int(1, 64),
        "dropout": Float(0.0, 1.0),
        "emb_dim": Int(1, 4 * MAX_CHANNELS, optional=True),
        "downsample": Choice(DOWNSAMPLE_MODES),
    },
)


def _monai_unet() -> type:
    from medrecon.nn.monai_unet import MonaiUNet

    return MonaiUNet


# MONAI's DiffusionModelUNet behind our interface (medrecon.nn.monai_unet, model=monai_unet); the options that
# shape its weights, each bounded like ours (its middle block always attends: num_head_channels always counts)
MONAI_UNET = Buildable(
    load=_monai_unet,
    options={
        "channels": Seq(Int(1, MAX_CHANNELS), 1, MAX_LEVELS),
        "num_res_blocks": Int(1, 16),
        "attention_levels": Seq(Bool(), 1, MAX_LEVELS),
        "num_head_channels": Int(1, MAX_CHANNELS),
        "norm_num_groups": Int(1, MAX_CHANNELS),
        "resblock_updown": Bool(),
        "use_flash_attention": Bool(),
        "timestep_scale": Float(1e-3, 1e4),
    },
)

NETWORKS: dict[str, Buildable] = {
    "medrecon.nn.unet.UNet": UNET,
    "medrecon.nn.UNet": UNET,
    "medrecon.nn.monai_unet.MonaiUNet": MONAI_UNET,
}


def build_network(
    cfg: Mapping[str, Any], *, spatial_dims: int, in_channels: int, out_channels: int
) -> nn.Module:
    """The network ``cfg`` names, with its checked options and the given shape facts.

    Raises:
        SchemaError: an unknown ``_target_``, an unknown option, or a value of the wrong type or range.
        ValueError: options the constructor refuses together (e.g. heads that do not divide the channels).
    """
    cls, options = resolve(NETWORKS, cfg, "model")
    return cls(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **options)


# ------------------------------------------------------------------------------------------------ autoencoders
def _autoencoder_kl() -> type:
    from monai.networks.nets import AutoencoderKL

    return AutoencoderKL


#: MONAI's KL-regularised autoencoder (Rombach et al. 2022; Pinaya et al. 2022): the first stage of a latent
#: diffusion model (``objective=autoencoder``, ``model=autoencoder_kl``). Every option that shapes its weights
#: or its forward pass, bounded like the networks' (the attention options need einops, a dependency).
AUTOENCODER_KL = Buildable(
    load=_autoencoder_kl,
    options={
        "channels": Seq(Int(1, MAX_CHANNELS), 1, MAX_LEVELS),
        "num_res_blocks": Int(1, 16),
        "attention_levels": Seq(Bool(), 1, MAX_LEVELS),
        "latent_channels": Int(1, 64),
        "norm_num_groups": Int(1, MAX_CHANNELS),
        "norm_eps": Float(1e-12, 1e-1),
        "with_encoder_nonlocal_attn": Bool(),
        "with_decoder_nonlocal_attn": Bool(),
        "use_convtranspose": Bool(),
        "include_fc": Bool(),
        "use_combined_linear": Bool(),
        "use_flash_attention": Bool(),
        "use_checkpoint": Bool(),
    },
)

#: The autoencoders a spec may name: ``spec.model`` of an ``objective=autoencoder`` checkpoint and
#: ``spec.latent.autoencoder`` of an ``objective=latent`` one. A separate registry from :data:`NETWORKS`: an
#: autoencoder is not a denoiser network (it is never called as ``net(x, c_noise)``).
AUTOENCODERS: dict[str, Buildable] = {
    "monai.networks.nets.AutoencoderKL": AUTOENCODER_KL,
    "monai.networks.nets.autoencoderkl.AutoencoderKL": AUTOENCODER_KL,
}


def is_autoencoder(cfg: Any) -> bool:
    """Whether a model config names a registered autoencoder (not a denoiser network)."""
    return isinstance(cfg, Mapping) and cfg.get("_target_") in AUTOENCODERS


def build_autoencoder(
    cfg: Mapping[str, Any], *, spatial_dims: int, channels: int, where: str = "model"
) -> nn.Module:
    """The autoencoder ``cfg`` names, with its checked options; ``channels`` image channels in and out.

    Raises:
        SchemaError: an unknown ``_target_``, an unknown option, or a value of the wrong type or range.
        ValueError: options MONAI refuses together (channels not multiples of ``norm_num_groups``, lengths of
            ``channels`` and ``attention_levels`` that differ).
    """
    cls, options = resolve(AUTOENCODERS, cfg, where)
    return cls(spatial_dims=spatial_dims, in_channels=channels, out_channels=channels, **options)


def autoencoder_factor(cfg: Mapping[str, Any]) -> int:
    """How many image voxels one latent voxel spans per axis: MONAI's AutoencoderKL halves the grid at every
    level but the last, so ``2 ** (len(channels) - 1)``."""
    return 2 ** (len(cfg["channels"]) - 1)
