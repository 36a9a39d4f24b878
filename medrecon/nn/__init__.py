"""Networks: the conditional diffusion U-Net (2D and 3D), and MONAI's behind the same interface. Know nothing
about noise schedules."""

from medrecon.nn.monai_unet import MonaiUNet
from medrecon.nn.unet import UNet, count_parameters

__all__ = ["MonaiUNet", "UNet", "count_parameters"]
