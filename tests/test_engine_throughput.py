"""The engine's throughput modes (medrecon.recon.engine): static batch shapes for compiled networks and
background writing. Both must leave every result and every failure rule exactly as the plain engine has them."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from medrecon.io.errors import Reason, RejectedInput
from medrecon.physics.base import Measurement, OperatorParams
from medrecon.recon.engine import Engine, Job


def _job(key: str, n: int, offset: float = 0.0) -> Job:
    y = (torch.arange(n, dtype=torch.float32) + offset).reshape(n, 1, 1, 1).expand(n, 1, 4, 4).clone()
    return Job(
        key=key, method="m", meas=Measurement(y, OperatorParams(), torch.zeros(n)), seeds=list(range(n))
    )


def _seeded(meas, cond, seeds):
    """A stand-in for a sampler: each unit's output depends only on its own input and seed."""
    noise = torch.stack([torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(s)) for s in seeds])
    return meas.y * 2 + noise, None


def _run(jobs, **kwargs):
    done, failed, shapes = {}, {}, []

    def method(meas, cond, seeds):
        shapes.append(int(meas.y.shape[0]))
        return _seeded(meas, cond, seeds)

    engine = Engine({"m": method}, 4, torch.device("cpu"), lambda j, m, s: done.update({j.key: m.clone()}),
                    lambda j, r, d: failed.update({j.key: (r, d)}), **kwargs)  # fmt: skip
    for job in jobs:
        engine.submit(job)
    engine.close()
    return done, failed, shapes


def test_static_shapes_pad_every_batch_and_change_no_result():
    jobs = lambda: [_job("a", 3), _job("b", 6, 10.0), _job("c", 1, 20.0)]  # noqa: E731 - 10 units, batch 4
    plain, _, plain_shapes = _run(jobs())
    static, failed, static_shapes = _run(jobs(), static_shapes=True)
    assert not failed and sorted(static) == ["a", "b", "c"]
    assert plain_shapes == [4, 4, 2] and static_shapes == [4, 4, 4]  # the last batch padded, not recompiled
    for key in plain:
        assert static[key].shape == plain[key].shape
        torch.testing.assert_close(static[key], plain[key], rtol=0, atol=0)


def test_background_writes_give_the_same_results_and_wait_in_flush():
    jobs = lambda: [_job(f"v{i}", 3, 10.0 * i) for i in range(5)]  # noqa: E731
    plain, _, _ = _run(jobs())
    written, threads = {}, set()

    def slow_write(job, mean, std):
        threads.add(threading.current_thread().name)
        time.sleep(0.01)
        written[job.key] = mean.clone()

    engine = Engine({"m": _seeded}, 4, torch.device("cpu"), slow_write, lambda j, r, d: None, write_threads=1)
    for job in jobs():
        engine.submit(job)
    engine.flush()  # returns only when every item is written
    assert sorted(written) == sorted(plain)
    for key in plain:
        torch.testing.assert_close(written[key], plain[key], rtol=0, atol=0)
    assert all(name.startswith("medrecon-write") for name in threads)
    engine.close()


def test_a_failing_background_write_fails_only_its_item():
    done, failed, overlap = [], {}, {"now": 0, "max": 0}

    def on_done(job, mean, std):
        overlap["now"] += 1
        overlap["max"] = max(overlap["max"], overlap["now"])
        time.sleep(0.005)
        overlap["now"] -= 1
        if job.key == "bad":
            raise RejectedInput(Reason.TRUNCATED_FILE, "file shrank while reading")
        if job.key == "boom":
            raise OSError("disk full")
        done.append(job.key)

    def on_fail(job, reason, detail):
        overlap["now"] += 1
        overlap["max"] = max(overlap["max"], overlap["now"])
        failed[job.key] = (reason, detail)
        overlap["now"] -= 1

    engine = Engine({"m": _seeded}, 2, torch.device("cpu"), on_done, on_fail, write_threads=2)
    for key in ("a", "bad", "b", "boom", "c"):
        engine.submit(_job(key, 3))
    engine.close()
    assert sorted(done) == ["a", "b", "c"]
    assert failed == {
        "bad": ("truncated_file", "file shrank while reading"),
        "boom": ("error", "OSError: disk full"),
    }
    assert overlap["max"] == 1  # on_done / on_fail never ran at the same time, even with two writer threads


def test_write_threads_is_validated():
    with pytest.raises(ValueError, match="write_threads"):
        Engine({"m": _seeded}, 2, torch.device("cpu"), lambda *a: None, lambda *a: None, write_threads=-1)


def test_batch_from_memory_fills_the_free_memory_and_stays_in_range():
    from medrecon.recon.batching import MemoryProbe, batch_from_memory

    mib = 2**20
    # fixed 100 MiB + 50 MiB per unit; 0.8 x 2000 MiB free = 1600 -> (1600 - 100) / 50 = 30 units
    assert batch_from_memory(MemoryProbe(150 * mib, 200 * mib, 2000 * mib)) == 30
    assert batch_from_memory(MemoryProbe(150 * mib, 200 * mib, 100 * mib)) == 1  # nothing fits: one at a time
    assert batch_from_memory(MemoryProbe(1, 2, 10**15)) == 256  # capped
    assert batch_from_memory(MemoryProbe(10, 10, 100), fraction=1.0) == 91  # zero growth counts as 1 byte
    with pytest.raises(ValueError, match="fraction"):
        batch_from_memory(MemoryProbe(1, 2, 3), fraction=0.0)


def test_auto_batch_is_a_no_op_off_cuda():
    done, shapes = {}, []

    def method(meas, cond, seeds):
        shapes.append(int(meas.y.shape[0]))
        return _seeded(meas, cond, seeds)

    engine = Engine({"m": method}, 4, torch.device("cpu"), lambda j, m, s: done.update({j.key: m}),
                    lambda j, r, d: None, auto_batch=True)  # fmt: skip
    engine.submit(_job("a", 9))
    engine.close()
    assert shapes == [4, 4, 1] and engine.batch_size == 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_batch_on_cuda_probes_then_grows_and_keeps_results():
    device = torch.device("cuda")

    def method(meas, cond, seeds):
        y = meas.y.to(device)
        big = torch.ones(y.shape[0], 256, 256, 64, device=device)  # 16 MiB per unit of working memory
        return (y * 2 + big.mean()).cpu(), None

    done = {}
    engine = Engine({"m": method}, 2, device, lambda j, m, s: done.update({j.key: m}), lambda j, r, d: None,
                    auto_batch=True)  # fmt: skip
    engine.submit(_job("a", 40))
    engine.close()
    assert engine.batch_size > 2
    torch.testing.assert_close(done["a"][:, 0, 0, 0], torch.arange(40.0) * 2 + 1)


def test_prefetch_keeps_order_confines_errors_and_loads_ahead():
    from medrecon.recon.prefetch import prefetch

    started, threads = [], set()

    def load(item):
        started.append(item)
        threads.add(threading.current_thread().name)
        if item == "bad":
            raise ValueError("unreadable")
        return item.upper()

    seen = []
    for loaded in prefetch(["a", "bad", "c", "d"], load, depth=1):
        seen.append((loaded.item, loaded.value, type(loaded.error).__name__ if loaded.error else None))
        if loaded.item == "a":
            time.sleep(0.05)
            assert "bad" in started  # read while the caller worked on "a"
    assert seen == [("a", "A", None), ("bad", None, "ValueError"), ("c", "C", None), ("d", "D", None)]
    assert all(name.startswith("medrecon-load") for name in threads)
    inline = [(x.item, x.value) for x in prefetch(["x", "y"], str.upper, depth=0)]
    assert inline == [("x", "X"), ("y", "Y")]
    with pytest.raises(ValueError, match="depth"):
        list(prefetch(["x"], str.upper, depth=-1))


def test_batch_size_auto_is_accepted_and_changes_no_result():
    import numpy as np

    from medrecon import api

    lowres = np.random.default_rng(0).random((8, 8, 5)).astype(np.float32)
    fixed = api.reconstruct("bicubic", lowres, task="sr4x", batch_size=2, device="cpu")
    auto = api.reconstruct("bicubic", lowres, task="sr4x", batch_size="auto", device="cpu")
    np.testing.assert_array_equal(auto.array, fixed.array)
    with pytest.raises(Exception, match="batch_size"):
        api.reconstruct("bicubic", lowres, task="sr4x", batch_size="big", device="cpu")
