"""Networks: the conditional diffusion U-Net (2D and 3D). Knows nothing about noise schedules."""

from medrecon.nn.unet import UNet, count_parameters

__all__ = ["UNet", "count_parameters"]
