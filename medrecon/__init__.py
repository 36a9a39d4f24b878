"""medrecon: reconstruct medical scans with conditional diffusion models.

The package is layered (see docs/architecture.md): ``io`` reads and writes volumes, ``physics`` defines the
measurement operators, ``nn`` the network, ``diffusion`` the parameterisation, samplers and guidance, ``train``,
``recon`` and ``evaluate`` the commands built on them. Physics and diffusion import neither Hydra nor the
training layer.
"""

__version__ = "0.1.0"
