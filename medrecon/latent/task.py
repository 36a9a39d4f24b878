"""A task seen from latent space: the physics acts on decoded images, so guidance needs no latent variant.

``LatentTask(task, codec, size)`` has the ``Task`` interface on latents ``z`` ``(B, latent_channels, *L)``
of images of spatial ``size`` (the reconstruction grid), with every operator going through the decoder::

    forward(z)        = A(decode(z))                       the measurement of the decoded image
    project(z, meas)  = encode(project_A(decode(z), meas)) decode, data consistency on the image, encode back
    condition(meas)   = codec.condition(task.condition(meas))
    pinv(meas)        = encode(A^+ y)

so ``medrecon.diffusion.guidance``'s ``data_consistency`` and ``dps`` wrappers, unchanged, guide a latent
sampler with the image-space physics: ``dc`` replaces each x0 estimate by the encoding of its projection onto
the measurement; ``dps`` follows the gradient of ``||y - A decode(D(z))||`` through the decoder and the
denoiser (reconstruct's ``guidance=dc`` projects only the decoded output, not every step:
``medrecon.latent.posterior.guidance_plan`` says why). ``adjoint`` is ``encode(A^H y)``: a nonlinear decoder has
no adjoint, and nothing in the guidance uses one. ``degrade`` is refused: measurements are simulated on images (training degrades images, then
encodes; ``medrecon.latent.loss``).

The data-consistency weight of a noisy measurement uses the task's own ``dc_tau`` (an image-space error): the
sampler's per-step ``tau`` is a latent-space error, which does not translate into image units. Noise-free
measurements (the thick-slice and super-resolution recipes) are projected exactly either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from medrecon.latent.codec import LatentCodec
from medrecon.physics.base import Measurement, OperatorParams, Task


class LatentTask(Task):
    """``task`` on the latents of ``codec`` for images of spatial ``size`` (see the module docstring)."""

    def __init__(self, task: Task, codec: LatentCodec, size: Sequence[int]) -> None:
        self.task, self.codec, self.size = task, codec, tuple(int(s) for s in size)
        self.name = task.name
        self.spatial_dims = task.spatial_dims
        self.image_channels = codec.latent_channels
        self.cond_channels = codec.cond_channels(task.cond_channels)
        self.dc_tau = task.dc_tau

    def decode(self, z: Tensor) -> Tensor:
        """Latents -> images on the reconstruction grid ``(B, C, *size)``."""
        return self.codec.decode(z, self.size)

    def forward(self, x: Tensor, params: OperatorParams) -> Tensor:
        return self.task.forward(self.decode(x), params)

    def adjoint(self, y: Tensor, params: OperatorParams) -> Tensor:
        return self.codec.encode(self.task.adjoint(y, params))

    def degrade(self, x: Tensor, generator: torch.Generator | None = None) -> Measurement:
        raise ValueError("a latent task does not simulate measurements: degrade the image, then encode it")

    def condition(self, meas: Measurement) -> Tensor:
        return self.codec.condition(self.task.condition(meas))

    def project(self, x: Tensor, meas: Measurement, tau: float | Tensor | None = None) -> Tensor:
        return self.codec.encode(self.task.project(self.decode(x), meas))

    def pinv(self, meas: Measurement) -> Tensor:
        return self.codec.encode(self.task.pinv(meas))
