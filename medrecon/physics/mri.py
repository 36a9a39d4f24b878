"""Accelerated Cartesian MRI: ``y_c = M fft2c(S_c x) + n`` on sampled phase-encode lines.

- Image: real ``(B, 1, *S)`` (magnitude-like, encoded intensities). The forward operator embeds it in the
  complex numbers; ``adjoint`` returns the real part of the complex adjoint (the adjoint of that embedding),
  so ``Re<A x, y> = <x, A^H y>`` for real ``x``; ``adjoint_complex`` is the full complex adjoint.
- Fourier plane: the centred orthonormal 2D FFT over the in-plane axes; 2D images: the two image axes; 3D
  volumes ``(I, J, K)``: the first two spatial axes ``(I, J)``, slice by slice along the slice axis ``K`` (a
  multi-slice 2D acquisition). The mask selects lines along the second in-plane axis (phase encode, ``W`` in
  2D, ``J`` in 3D), one fresh mask per sample, shared by the slices of a volume.
- Coils: ``coils=1`` (single-coil, no maps) or simulated smooth maps (``medrecon.physics.coils``), normalised
  so ``sum_c |S_c|^2 = 1``; then ``A^H y = sum_c conj(S_c) ifft2c(M y_c)``.
- Noise: complex Gaussian with standard deviation ``noise_std`` on the real and on the imaginary part of every
  sampled entry (the ortho FFT keeps image-domain and k-space units equal).
"""

from __future__ import annotations

import torch
from torch import Tensor

from medrecon.physics.base import (
    Measurement,
    OperatorParams,
    Task,
    check_image,
    check_spatial_dims,
    dc_weight,
    expand_to,
    randn,
)
from medrecon.physics.coils import estimate_coil_maps, simulate_coil_maps
from medrecon.physics.fft import fft2c, ifft2c, mirror
from medrecon.physics.masks import make_mask_func

DEFAULT_CENTER_FRACTION = {4: 0.08, 8: 0.04}


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """complex128 for float64/complex128 inputs, complex64 otherwise."""
    return torch.complex128 if dtype in (torch.float64, torch.complex128) else torch.complex64


class MRITask(Task):
    """Undersampled Cartesian MRI with fastMRI-style 1D masks.

    Args:
        acceleration: the undersampling factor R (the number of lines is ``round(W / R)``).
        center_fraction: fraction of fully sampled centre lines (default 0.08 for R=4, 0.04 for R=8, else
            ``0.32 / R``).
        mask_type: ``random`` or ``equispaced`` (``medrecon.physics.masks``).
        coils: 1 (single-coil) or the number of simulated coils.
        noise_std: complex k-space noise std (per real/imaginary part), >= 0.
        spatial_dims: 2 or 3.
        zero_level: encoded value of zero signal (for magnitude images, see ``magnitude``).
        dc_tau: default error std of the estimate for the noise-aware ``project``.
        name: config name (default ``mri_r{R}``).
    """

    cond_channels = 2

    def __init__(
        self,
        acceleration: float = 4,
        center_fraction: float | None = None,
        mask_type: str = "random",
        coils: int = 1,
        noise_std: float = 0.0,
        spatial_dims: int = 2,
        zero_level: float = -1.0,
        dc_tau: float = 0.1,
        name: str | None = None,
    ) -> None:
        if center_fraction is None:
            center_fraction = DEFAULT_CENTER_FRACTION.get(acceleration, 0.32 / acceleration)
        self.mask_func = make_mask_func(mask_type, center_fraction, acceleration)
        if int(coils) != coils or coils < 1:
            raise ValueError(f"coils must be a positive integer, got {coils!r}")
        if not noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
        self.acceleration = acceleration
        self.center_fraction = float(center_fraction)
        self.mask_type = mask_type
        self.coils = int(coils)
        self.noise_std = float(noise_std)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.zero_level = float(zero_level)
        self.dc_tau = float(dc_tau)
        self.name = name or f"mri_r{acceleration:g}"

    # -- geometry --
    @property
    def plane_dims(self) -> tuple[int, int]:
        """The two Fourier-transformed axes (negative indices): ``(-2, -1)`` in 2D, ``(-3, -2)`` in 3D."""
        return (-2, -1) if self.spatial_dims == 2 else (-3, -2)

    def _mask_shape(self, batch: int, num_cols: int) -> tuple[int, ...]:
        shape = [batch] + [1] * (self.spatial_dims + 1)
        shape[self.plane_dims[1]] = num_cols
        return tuple(shape)

    def sample_params(
        self,
        x_shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> OperatorParams:
        """A fresh mask per sample (``(B, 1, 1, W)`` in 2D, ``(B, 1, 1, J, 1)`` in 3D) and, for ``coils > 1``,
        the simulated maps (``(B, coils, H, W)`` in 2D, ``(B, coils, I, J, 1)`` in 3D)."""
        batch = x_shape[0]
        num_cols = x_shape[self.plane_dims[1]]
        masks = [self.mask_func(num_cols, generator, device) for _ in range(batch)]
        mask = torch.stack(masks).reshape(self._mask_shape(batch, num_cols))
        maps = None
        if self.coils > 1:
            h, w = x_shape[self.plane_dims[0]], x_shape[self.plane_dims[1]]
            maps = simulate_coil_maps(self.coils, (h, w), device)
            if self.spatial_dims == 3:
                maps = maps[..., None]
            maps = maps.unsqueeze(0).expand(batch, *maps.shape)
        return OperatorParams(mask=mask, maps=maps)

    # -- operator --
    def forward(self, x: Tensor, params: OperatorParams) -> Tensor:
        """``(B, 1, *S)`` real (or complex) image -> ``(B, coils, *S)`` complex masked k-space."""
        z = x.to(complex_dtype(x.dtype))
        if params.maps is not None:
            z = z * params.maps.to(z.dtype)
        k = fft2c(z, self.plane_dims)
        return k if params.mask is None else k * params.mask.to(k.real.dtype)

    def adjoint_complex(self, y: Tensor, params: OperatorParams) -> Tensor:
        """``sum_c conj(S_c) ifft2c(M y_c)``: ``(B, coils, *S)`` -> ``(B, 1, *S)`` complex."""
        if params.mask is not None:
            y = y * params.mask.to(y.real.dtype)
        z = ifft2c(y, self.plane_dims)
        if params.maps is None:
            if z.shape[1] != 1:
                raise ValueError(f"{z.shape[1]}-coil data needs coil maps in OperatorParams.maps")
            return z
        return (params.maps.to(z.dtype).conj() * z).sum(dim=1, keepdim=True)

    def adjoint(self, y: Tensor, params: OperatorParams) -> Tensor:
        """The real part of ``adjoint_complex`` (the adjoint for real images)."""
        return self.adjoint_complex(y, params).real

    # -- measurements --
    def degrade(self, x: Tensor, generator: torch.Generator | None = None) -> Measurement:
        check_image(x, self.spatial_dims, self.image_channels)
        params = self.sample_params(tuple(x.shape), generator, x.device)
        y = self.forward(x, params)
        if self.noise_std > 0:
            real = y.real.dtype
            noise = torch.complex(
                randn(tuple(y.shape), generator, y.device, real),
                randn(tuple(y.shape), generator, y.device, real),
            )
            y = y + self.noise_std * noise * params.mask.to(real)
        noise_std = torch.full((x.shape[0],), self.noise_std, dtype=x.dtype, device=x.device)
        return Measurement(y, params, noise_std)

    def condition(self, meas: Measurement) -> Tensor:
        """Real and imaginary parts of the zero-filled coil-combined image ``A^H y``: ``(B, 2, *S)``."""
        z = self.adjoint_complex(meas.y, meas.params)
        return torch.cat([z.real, z.imag], dim=1)

    def magnitude(self, z: Tensor) -> Tensor:
        """Magnitude of a complex image measured from zero signal: ``|z - zero_level| + zero_level``."""
        return (z - self.zero_level).abs() + self.zero_level

    def project(self, x: Tensor, meas: Measurement, tau: float | Tensor | None = None) -> Tensor:
        """k-space data consistency on the sampled lines.

        Single-coil: the exact projection onto ``{x real : M fft2c(x) = y}``. A real image has Hermitian
        k-space, so a sampled line also fixes its mirror line ``-k``: the residual ``r = w M (y - fft2c(x))``
        is spread to both, averaged where both are sampled, ``x + Re ifft2c((r + conj(mirror(r))) / n)``.
        Multi-coil: the coil-combined replacement ``x + Re sum_c conj(S_c) ifft2c(w M (y_c - fft2c(S_c x)))``
        (a data-consistency step; exact only when ``A A^H = I``). ``w = 1`` for noise-free samples, else
        ``w = v / (v + noise_std^2)`` with ``v = tau^2 / (2 coils)`` the per-part variance of a white image
        error in one coil's k-space.
        """
        tau = self.dc_tau if tau is None else tau
        coils = meas.y.shape[1]
        w = dc_weight(meas.noise_std, torch.as_tensor(tau, device=x.device) ** 2 / (2 * coils))
        residual = meas.y - self.forward(x, meas.params)
        if meas.params.mask is not None:
            residual = residual * meas.params.mask.to(residual.real.dtype)
        residual = residual * expand_to(w, residual).to(residual.real.dtype)
        if meas.params.maps is not None:
            return x + self.adjoint(residual, meas.params)
        return x + self._hermitian_update(residual, meas.params.mask).to(x.dtype)

    def _hermitian_update(self, residual: Tensor, mask: Tensor | None) -> Tensor:
        """The minimum-norm real image whose k-space equals ``residual`` on the mask."""
        dims = self.plane_dims
        both = residual + mirror(residual, dims).conj()
        if mask is None:
            count = torch.full((1,), 2.0, device=residual.device)
        else:
            count = (mask + mirror(mask, dims)).clamp_min(1.0)
        return ifft2c(both / count.to(residual.real.dtype), dims).real

    def pinv(self, meas: Measurement) -> Tensor:
        """The minimum-norm real image consistent with the data (single-coil); the coil-combined zero-filled
        image (multi-coil)."""
        zero = torch.zeros(self._image_shape(meas.y), dtype=meas.y.real.dtype, device=meas.y.device)
        noise_free = Measurement(meas.y, meas.params, torch.zeros_like(meas.noise_std))
        return self.project(zero, noise_free)

    def _image_shape(self, y: Tensor) -> tuple[int, ...]:
        return (y.shape[0], 1, *y.shape[2:])


def sampled_columns(kspace: Tensor) -> Tensor:
    """``(B, W)`` boolean: the columns of ``(B, coils, H, W)`` k-space that hold any nonzero sample."""
    return (kspace.abs() > 0).any(dim=-2).any(dim=1)


def center_block(columns: Tensor) -> Tensor:
    """The contiguous run of sampled columns around the zero frequency ``W // 2`` of a ``(W,)`` mask."""
    w = columns.shape[-1]
    block = torch.zeros_like(columns, dtype=torch.bool)
    if not bool(columns[w // 2]):
        raise ValueError("the k-space centre line (W // 2) is not sampled; cannot estimate coil maps")
    lo = w // 2
    while lo > 0 and bool(columns[lo - 1]):
        lo -= 1
    hi = w // 2
    while hi < w - 1 and bool(columns[hi + 1]):
        hi += 1
    block[lo : hi + 1] = True
    return block


def measurement_from_kspace(
    kspace: Tensor, mask: Tensor | None = None, noise_std: float = 0.0, spatial_dims: int = 2
) -> Measurement:
    """Wrap measured (fastMRI-layout) k-space as a ``Measurement`` for ``MRITask``.

    fastMRI stores centred k-space ``(slices, coils, H, W)`` (multi-coil) or ``(slices, H, W)`` (single-coil)
    with phase encoding along ``W`` — the convention of ``fft2c`` and of the masks here. Multi-coil maps are
    estimated from the fully sampled centre (``estimate_coil_maps``). The data stay in the file's units: scale
    them as the images the model was trained on were encoded. Real data carry image phase, which the
    real-image model of ``MRITask`` ignores (``adjoint`` keeps the real part).

    Args:
        kspace: complex ``(B, coils, H, W)`` or ``(B, H, W)``.
        mask: ``(W,)`` 0/1 sampling mask, or None to infer it per sample from the nonzero columns.
        noise_std: the k-space noise std, if known (per real/imaginary part).
        spatial_dims: must be 2 (slices of a volume are the batch).

    Returns:
        Measurement with ``y (B, coils, H, W)`` complex64, ``params.mask (B, 1, 1, W)`` float32 and, for
        ``coils > 1``, ``params.maps (B, coils, H, W)`` complex64.
    """
    if spatial_dims != 2:
        raise ValueError(f"measurement_from_kspace handles 2D slices (spatial_dims=2), got {spatial_dims!r}")
    if not torch.is_complex(kspace):
        raise ValueError(f"kspace must be a complex tensor, got dtype {kspace.dtype}")
    if kspace.ndim == 3:
        kspace = kspace[:, None]
    if kspace.ndim != 4:
        raise ValueError(f"kspace must be (B, coils, H, W) or (B, H, W), got shape {tuple(kspace.shape)}")
    kspace = kspace.to(torch.complex64)
    batch, coils, _, width = kspace.shape
    if mask is None:
        columns = sampled_columns(kspace)
    else:
        mask = torch.as_tensor(mask, device=kspace.device).flatten()
        if mask.shape[0] != width:
            raise ValueError(f"mask has {mask.shape[0]} entries, k-space has {width} columns")
        columns = (mask != 0).unsqueeze(0).expand(batch, width)
    mask4 = columns.to(torch.float32).reshape(batch, 1, 1, width)
    maps = None
    if coils > 1:
        centre = torch.stack([center_block(c) for c in columns]).to(torch.float32).reshape(batch, 1, 1, width)
        maps = estimate_coil_maps(kspace, centre)
    noise = torch.full((batch,), float(noise_std), device=kspace.device)
    return Measurement(kspace * mask4, OperatorParams(mask=mask4, maps=maps), noise)
