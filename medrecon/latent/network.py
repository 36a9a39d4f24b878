"""The network of ``conf/model/latent.yaml``: stage 2 of latent diffusion written as a model.

``medrecon train model=latent model.autoencoder=AE.safetensors`` is the spelling of docs/usage.md for
``objective=latent autoencoder=AE.safetensors model=unet_tiny``: the config holds the network's options and the
stage-1 file side by side. Training reads ``model.autoencoder`` (``medrecon.train.latent``) and stores the plain
``medrecon.nn.unet.UNet`` in the checkpoint; this class only lets the config instantiate as it is (Hydra, the
config tests), taking the file name and passing everything else to ``UNet``.
"""

from __future__ import annotations

from typing import Any

from medrecon.nn.unet import UNet

#: The network a checkpoint stores for this config.
STORED_TARGET = "medrecon.nn.unet.UNet"
TARGET = "medrecon.latent.network.LatentUNet"


class LatentUNet(UNet):
    """``UNet(**options)``; ``autoencoder`` (the stage-1 checkpoint's path) is accepted and not used here."""

    def __init__(self, *, autoencoder: Any = None, **options: Any) -> None:
        super().__init__(**options)
