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

NETWORKS: dict[str, Buildable] = {"medrecon.nn.unet.UNet": UNET, "medrecon.nn.UNet": UNET}


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
