"""Training data: manifest records -> encoded 2D slices (optionally 2.5D) or 3D patches, and the intensity
Encoder.

Modules: ``encoder`` (scanner units <-> [-1, 1]), ``source`` (manifest records, LRU volume cache), ``regions``
(splits, ``data.slice_split``), ``transforms`` (crop/pad, flips, rotations), ``datasets``, ``sampler``
(seeded, sharded, resumable), ``context`` (2.5D condition stacks), ``build`` (``cfg.data`` -> datasets).
"""

from medrecon.data.encoder import Encoder

__all__ = ["Encoder"]
