"""Measurement (not a test): does self-ensembling over flips help the sr4x demo model? (docs/results.md)

For every ok record of MANIFEST (optionally slices LO:HI along axis 2), the ground truth cropped to a multiple of
4 is degraded by the task's forward operator (4x4 block means, slice by slice), then reconstructed by bicubic,
TV and the bundled sr4x demo model (``sampler=mmse`` with STEPS, through the Python API), once plainly and as the
mean of the four flipped reconstructions (each un-flipped), and scored with ``volume_metrics``.

    PYTHONPATH=. python scripts/flip_ensemble_pilot.py unlike/manifest.jsonl 5
    PYTHONPATH=. python scripts/flip_ensemble_pilot.py demo/manifest.jsonl 5 36:49   # the template's test slab
"""

import sys

import numpy as np
import torch

import medrecon
from medrecon.evaluate.metrics import volume_metrics
from medrecon.io.archive import load_item
from medrecon.manifest import read_manifest
from medrecon.physics.base import OperatorParams

torch.set_num_threads(2)
model = medrecon.load_model(device="cpu")
task = medrecon.get_task("sr4x")
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
recs = [r for r in read_manifest(sys.argv[1]) if r.status == "ok"]
res = {}
for r in recs:
    vol = load_item(r)
    a = vol.array.astype(np.float32)
    if len(sys.argv) > 3:
        lo, hi = map(int, sys.argv[3].split(":"))
        a = a[:, :, lo:hi]
    H, W = (a.shape[0] // 4) * 4, (a.shape[1] // 4) * 4
    a = a[:H, :W]
    sl = torch.from_numpy(a).permute(2, 0, 1)[:, None]
    low = task.forward(sl, OperatorParams())[:, 0].permute(1, 2, 0).numpy()
    outs = {}
    outs["bicubic"] = medrecon.reconstruct("bicubic", low, task="sr4x").array
    outs["tv"] = medrecon.reconstruct("tv", low, task="sr4x").array
    acc = []
    for fx in (False, True):
        for fy in (False, True):
            l2 = low[::-1] if fx else low
            l2 = l2[:, ::-1] if fy else l2
            o = medrecon.reconstruct(model, np.ascontiguousarray(l2), steps=steps).array
            o = o[::-1] if fx else o
            o = o[:, ::-1] if fy else o
            acc.append(o)
            if not fx and not fy:
                outs["plain"] = o
    outs["flip4"] = np.mean(acc, axis=0)
    res[r.id] = {}
    for k, o in outs.items():
        m = volume_metrics(a, np.asarray(o), slice_axis=2)
        res[r.id][k] = (round(m.psnr, 2), round(m.ssim, 4))
    print(r.id, res[r.id], flush=True)
keys = list(next(iter(res.values())))
for k in keys:
    p = np.mean([v[k][0] for v in res.values()])
    s = np.mean([v[k][1] for v in res.values()])
    print("MEAN", k, round(p, 2), round(s, 4))
