"""Measurement physics: forward operators, adjoints, noise models and data consistency (torch only, no Hydra).

Tasks (configured by ``conf/task/*.yaml``): ``DenoiseTask`` (``denoise``), ``SuperResolutionTask`` (``sr2x``,
``sr4x``), ``ThickSliceTask`` (``thick_slices``), ``MRITask`` (``mri_r4``, ``mri_r8``). See docs/physics.md.
"""

from medrecon.physics.base import Measurement, OperatorParams, Task
from medrecon.physics.coils import estimate_coil_maps, simulate_coil_maps
from medrecon.physics.denoise import DenoiseTask
from medrecon.physics.fft import fft2c, ifft2c
from medrecon.physics.masks import EquispacedMaskFunc, RandomMaskFunc, make_mask_func
from medrecon.physics.mri import MRITask, measurement_from_kspace
from medrecon.physics.registry import TASK_NAMES, build_task
from medrecon.physics.sr import BlockAverageTask, SuperResolutionTask, ThickSliceTask

__all__ = [
    "TASK_NAMES",
    "BlockAverageTask",
    "DenoiseTask",
    "EquispacedMaskFunc",
    "MRITask",
    "Measurement",
    "OperatorParams",
    "RandomMaskFunc",
    "SuperResolutionTask",
    "Task",
    "ThickSliceTask",
    "build_task",
    "estimate_coil_maps",
    "fft2c",
    "ifft2c",
    "make_mask_func",
    "measurement_from_kspace",
    "simulate_coil_maps",
]
