"""Checkpoints are data, never code: crafted files that try to run something, or to allocate absurd networks,
are refused with one-line usage errors before any weight is read, and nothing on disk changes."""

from __future__ import annotations

import inspect
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from medrecon import checkpoint as ckpt_module
from medrecon.checkpoint import (
    MAX_HEADER_BYTES,
    ModelSpec,
    check_checkpoint,
    load_checkpoint,
    load_weights,
    read_metadata,
    save_checkpoint,
)
from medrecon.cli import run_command
from medrecon.data.encoder import Encoder
from medrecon.errors import UsageError
from medrecon.io.nifti import write_nifti
from medrecon.nn.registry import NETWORKS
from medrecon.physics.registry import TASKS, build_task
from medrecon.volume import Volume

REPO = Path(__file__).resolve().parents[1]
MODEL = {
    "_target_": "medrecon.nn.unet.UNet",
    "channels": [8, 16],
    "num_res_blocks": 1,
    "attention_levels": [False, False],
    "num_heads": 2,
    "dropout": 0.0,
}
TASK = {"_target_": "medrecon.physics.SuperResolutionTask", "factor": 2, "spatial_dims": 2, "noise_std": 0.0}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A valid tiny checkpoint: its path, metadata (str -> str) and tensors."""
    spec = ModelSpec(model=MODEL, task=TASK, spatial_dims=2, image_channels=1, cond_channels=1)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("good") / "good.safetensors"
    save_checkpoint(path, raw=spec.build_precond(), ema=None, spec=spec, encoder=Encoder(), config={}, step=2)
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return path, metadata, tensors


@pytest.fixture
def victims(tmp_path):
    """A folder with a file that an attack would overwrite or delete; returns a function that asserts the
    folder is exactly as it was (same files, bytes and modification times, no new file)."""
    folder = tmp_path / "victims"
    folder.mkdir()
    victim = folder / "precious.txt"
    victim.write_bytes(b"precious data\n")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}

    def untouched() -> None:
        after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}
        assert after == before

    return folder, victim, untouched


@pytest.fixture(autouse=True)
def no_instantiate_no_weights(monkeypatch):
    """Fail loudly if loading ever reaches Hydra's instantiate, or reads weights of a refused file."""

    def forbidden(*args, **kwargs):
        raise AssertionError("hydra.utils.instantiate was called while loading a checkpoint")

    import hydra.utils

    monkeypatch.setattr(hydra.utils, "instantiate", forbidden)
    reads: list[str] = []
    real = ckpt_module._read_set
    monkeypatch.setattr(ckpt_module, "_read_set", lambda *a, **k: reads.append(str(a[0])) or real(*a, **k))
    return reads


def craft(path: Path, good, *, model_spec=None, tensors=None, **fields) -> Path:
    """A checkpoint written with safetensors directly: ``good``'s metadata with ``model_spec`` (JSON-dumped)
    and any metadata ``fields`` replaced (``None`` removes a field)."""
    _, metadata, good_tensors = good
    metadata = dict(metadata)
    if model_spec is not None:
        metadata["spec"] = json.dumps(model_spec)
    for key, value in fields.items():
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value if isinstance(value, str) else json.dumps(value)
    save_file(dict(good_tensors) if tensors is None else tensors, str(path), metadata=metadata)
    return path


def base_spec() -> dict:
    return {
        "model": dict(MODEL),
        "task": dict(TASK),
        "spatial_dims": 2,
        "image_channels": 1,
        "cond_channels": 1,
        "context": 0,
        "sigma_data": 0.5,
    }


def refused(path: Path, reads: list[str], match: str) -> str:
    with pytest.raises(UsageError, match=match) as info:
        load_checkpoint(path)
    assert reads == []  # refused before any weight was read
    message = str(info.value)
    assert "\n" not in message and len(message) < 400
    return message


# ------------------------------------------------------------------------------------------------ code
def _attacks(victim: Path, folder: Path) -> dict[str, dict]:
    """Specs that would run code if the loader imported or instantiated what the file names."""
    pwned = folder / "pwned"
    system = {"_target_": "os.system", "_args_": [f"touch {pwned}"]}
    opener = {"_target_": "builtins.open", "_args_": [str(victim), "w"]}
    unlink = {"_target_": "pathlib.Path.unlink", "_args_": [str(victim)]}
    cases = {}
    for name, evil in {"open": opener, "unlink": unlink, "system": system}.items():
        for part in ("model", "task"):
            spec = base_spec()
            spec[part] = evil
            cases[f"{name}-as-{part}"] = spec
    spec = base_spec()
    spec["model"] = {"_target_": "builtins.open", "file": str(victim), "mode": "w"}
    cases["open-kwargs"] = spec
    spec = base_spec()
    spec["model"]["channels"] = [system, 16]  # nested inside a list option
    cases["nested-in-channels"] = spec
    spec = base_spec()
    spec["model"]["dropout"] = opener  # nested inside a scalar option
    cases["nested-in-option"] = spec
    spec = base_spec()
    spec["task"]["noise_std"] = {"_target_": "pathlib.Path.unlink", "self": str(victim)}
    cases["nested-in-task-option"] = spec
    spec = base_spec()
    spec["model"] = {**MODEL, "_args_": [str(victim), "w"]}
    cases["args-key"] = spec
    for key, value in (("_recursive_", False), ("_partial_", True), ("_convert_", "all")):
        spec = base_spec()
        spec["model"] = {**MODEL, key: value}
        cases[key] = spec
    spec = base_spec()
    spec["model"] = {**MODEL, "_target_": "medrecon.nn.unet.ResBlock"}  # medrecon's, but not registered
    cases["unregistered-medrecon-class"] = spec
    spec = base_spec()
    spec["evil"] = system  # an unknown spec field
    cases["unknown-spec-field"] = spec
    return cases


@pytest.mark.parametrize(
    "case",
    [
        "open-as-model",
        "open-as-task",
        "unlink-as-model",
        "unlink-as-task",
        "system-as-model",
        "system-as-task",
        "open-kwargs",
        "nested-in-channels",
        "nested-in-option",
        "nested-in-task-option",
        "args-key",
        "_recursive_",
        "_partial_",
        "_convert_",
        "unregistered-medrecon-class",
        "unknown-spec-field",
    ],
)
def test_spec_that_names_code_is_refused_and_runs_nothing(
    case, good, victims, no_instantiate_no_weights, tmp_path
):
    folder, victim, untouched = victims
    spec = _attacks(victim, folder)[case]
    path = craft(tmp_path / "evil.safetensors", good, model_spec=spec)
    refused(path, no_instantiate_no_weights, r"spec")
    for reader in (read_metadata, check_checkpoint):
        with pytest.raises(UsageError):
            reader(path)
    untouched()


def test_encoder_and_card_that_name_code_are_refused(good, victims, no_instantiate_no_weights, tmp_path):
    folder, victim, untouched = victims
    system = {"_target_": "os.system", "_args_": [f"touch {folder / 'pwned'}"]}
    encoders = [
        system,
        {**Encoder().to_dict(), "_target_": "os.system"},
        {**Encoder().to_dict(), "low": system},
        {**Encoder().to_dict(), "clip": 1},  # an int is not a bool
        {k: v for k, v in Encoder().to_dict().items() if k != "kind"},
    ]
    for n, enc in enumerate(encoders):
        path = craft(tmp_path / f"enc{n}.safetensors", good, encoder=enc)
        refused(path, no_instantiate_no_weights, "encoder")
    cards = [system, {"data": system}, {"validation": {"psnr": 30.0, "ssim": 0.9, "step": True}}]
    for n, card in enumerate(cards):
        path = craft(tmp_path / f"card{n}.safetensors", good, card=card)
        refused(path, no_instantiate_no_weights, "card")
    untouched()


def test_a_stored_config_is_data_it_is_never_instantiated(good, victims, no_instantiate_no_weights, tmp_path):
    """The run config legitimately holds ``_target_`` keys (sampler, loss): they are read, never built."""
    folder, victim, untouched = victims
    config = {
        "sampler": {"_target_": "os.system", "_args_": [f"touch {folder / 'pwned'}"]},
        "data": {"axis": 2},
    }
    loaded = load_checkpoint(craft(tmp_path / "cfg.safetensors", good, config=config))
    assert loaded.config.sampler._target_ == "os.system"  # just a string
    untouched()
    no_instantiate_no_weights.clear()  # that one was loaded
    # an interpolation would be resolved when the config is read: refused
    path = craft(tmp_path / "interp.safetensors", good, config={"data": {"axis": "${oc.env:HOME}"}})
    refused(path, no_instantiate_no_weights, "interpolation")


def test_registry_build_task_refuses_code_too(victims):
    folder, victim, untouched = victims
    for cfg in (
        {"_target_": "builtins.open", "_args_": [str(victim), "w"]},
        {"_target_": "pathlib.Path.unlink", "self": str(victim)},
        {"_target_": "os.system", "command": f"touch {folder / 'pwned'}"},
        {**TASK, "_partial_": True},
        {**TASK, "factor": {"_target_": "os.system"}},
        {**TASK, "factor": True},
    ):
        with pytest.raises(ValueError):
            build_task(cfg)
    untouched()


# ------------------------------------------------------------------------------------------------ types
@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"num_res_blocks": True}, "num_res_blocks"),  # bool for int
        ({"attention_levels": [0, 1]}, "attention_levels"),  # int for bool
        ({"channels": [8.0, 16]}, "channels"),  # float for int
        ({"channels": "8,16"}, "channels"),
        ({"dropout": "0.1"}, "dropout"),
        ({"num_heads": 10**30}, "num_heads"),
        ({"downsample": "maxpool"}, "downsample"),
        ({"channels": [10**6, 10**6]}, "channels"),  # one level bounded before anything is built
        ({"channels": [8] * 9, "attention_levels": [False] * 9}, "channels"),  # too many levels
        # every option in range, but the whole network is absurd: refused from its meta-device size
        (
            {"channels": [4096] * 8, "attention_levels": [False] * 8, "num_res_blocks": 16},
            "parameters",
        ),
    ],
)
def test_model_options_of_wrong_type_or_absurd_size_are_refused(
    change, match, good, no_instantiate_no_weights, tmp_path
):
    spec = base_spec()
    spec["model"].update(change)
    refused(craft(tmp_path / "bad.safetensors", good, model_spec=spec), no_instantiate_no_weights, match)


MONAI_MODEL = {
    "_target_": "medrecon.nn.monai_unet.MonaiUNet",
    "channels": [8, 16],
    "num_res_blocks": 1,
    "attention_levels": [False, True],
    "num_head_channels": 8,
    "norm_num_groups": 8,
    "resblock_updown": False,
    "use_flash_attention": True,
    "timestep_scale": 250.0,
}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"channels": [8, {"_target_": "os.system"}]}, "channels"),  # code riding inside a list
        ({"channels": [8, 16.0]}, "channels"),
        ({"channels": [10**6, 16]}, "channels"),
        ({"channels": [8] * 9, "attention_levels": [False] * 9}, "channels"),  # too many levels
        ({"attention_levels": [False, "yes"]}, "attention_levels"),
        ({"attention_levels": [False]}, "attention_levels"),  # one flag per level (the constructor's check)
        ({"num_head_channels": 0}, "num_head_channels"),
        ({"num_head_channels": 3}, "num_head_channels"),  # does not divide the attended channels
        ({"norm_num_groups": 3}, "norm_num_groups"),
        ({"resblock_updown": 1}, "resblock_updown"),
        ({"timestep_scale": float("nan")}, "timestep_scale"),
        ({"timestep_scale": True}, "timestep_scale"),
        ({"with_conditioning": True}, "with_conditioning"),  # MONAI options medrecon does not expose
        ({"cross_attention_dim": 8}, "cross_attention_dim"),
        # every option in range, but the whole network is absurd: refused from its meta-device size
        (
            {"channels": [4096] * 3, "attention_levels": [False] * 3, "num_res_blocks": 8},
            "parameters",
        ),
        ({}, "lacks"),  # a valid MONAI spec over medrecon.nn.UNet's tensors
    ],
)
def test_monai_network_options_are_checked_like_ours(
    change, match, good, no_instantiate_no_weights, tmp_path
):
    spec = base_spec()
    spec["model"] = {**MONAI_MODEL, **change}
    refused(craft(tmp_path / "bad.safetensors", good, model_spec=spec), no_instantiate_no_weights, match)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"spatial_dims": True}, "spatial_dims"),
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"cond_channels": 10**9}, "cond_channels"),
        ({"cond_channels": 3}, "channels"),  # does not fit the task
        ({"context": 1}, "channels"),
        ({"sigma_data": float("nan")}, "sigma_data"),
        ({"task": {**TASK, "spatial_dims": 3}}, "spatial_dims"),
        ({"task": {**TASK, "factor": 2.5}}, "factor"),
        ({"task": {**TASK, "factor": 10**12}}, "factor"),
        ({"task": {"_target_": "medrecon.physics.MRITask", "coils": 10**6, "spatial_dims": 2}}, "coils"),
        ({"model": [1, 2]}, "model"),
    ],
)
def test_spec_fields_of_wrong_type_or_range_are_refused(
    change, match, good, no_instantiate_no_weights, tmp_path
):
    spec = base_spec()
    spec.update(change)
    refused(craft(tmp_path / "bad.safetensors", good, model_spec=spec), no_instantiate_no_weights, match)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"spec": "{not json"}, "not valid JSON"),
        ({"spec": "[" * 50_000 + "]" * 50_000}, "not valid JSON"),  # nesting bomb
        ({"config": "[1, 2]"}, "config"),
        ({"format_version": "2"}, "format version"),
        ({"format": "something-else"}, "not a medrecon checkpoint"),
        ({"step": "-1"}, "step"),
        ({"step": "1e9"}, "step"),
        ({"param_count": "12"}, "param_count"),
        ({"medrecon_version": "0.1\nERROR fake line"}, "medrecon_version"),
        ({"surprise": "1"}, "unknown metadata"),
        ({"encoder": None}, "lacks encoder"),
    ],
)
def test_invalid_metadata_is_refused(fields, match, good, no_instantiate_no_weights, tmp_path):
    refused(craft(tmp_path / "bad.safetensors", good, **fields), no_instantiate_no_weights, match)


# ------------------------------------------------------------------------------------------------ sizes
def test_oversized_header_is_refused_before_it_is_parsed(
    good, no_instantiate_no_weights, tmp_path, monkeypatch
):
    path = craft(tmp_path / "big.safetensors", good, config={"pad": "x" * (MAX_HEADER_BYTES + 10)})
    parsed = []
    real_loads = json.loads
    monkeypatch.setattr(
        ckpt_module.json, "loads", lambda s, *a, **k: parsed.append(1) or real_loads(s, *a, **k)
    )
    refused(path, no_instantiate_no_weights, "header has")
    assert parsed == []  # the length field alone decided
    # a header length that points past the end of the file
    (tmp_path / "lies.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    refused(tmp_path / "lies.safetensors", no_instantiate_no_weights, "not a safetensors file")
    (tmp_path / "short.safetensors").write_bytes(b"\x01\x02")
    refused(tmp_path / "short.safetensors", no_instantiate_no_weights, "not a safetensors file")


def test_real_headers_are_far_below_the_bound():
    for path in (REPO / "medrecon" / "assets" / "weights").glob("*.safetensors"):
        with open(path, "rb") as f:
            assert struct.unpack("<Q", f.read(8))[0] < MAX_HEADER_BYTES // 16


# ------------------------------------------------------------------------------------------------ tensors
def _tensor_cases(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[dict, str]]:
    name = "ema.net.stem.weight"
    cases = {}
    t = dict(tensors)
    t[name] = tensors[name].to(torch.int64)
    cases["int-dtype"] = (t, "dtype")
    t = dict(tensors)
    t[name] = torch.zeros(*tensors[name].shape[:-1], tensors[name].shape[-1] + 1)
    cases["shape"] = (t, "shape")
    t = dict(tensors)
    t[name] = tensors[name].flatten()  # same bytes, another shape
    cases["flat"] = (t, "shape")
    t = dict(tensors)
    del t[name]
    cases["missing"] = (t, "lacks 1 tensor")
    t = dict(tensors)
    del t["raw.net.out_conv.bias"]
    cases["missing-raw"] = (t, "lacks 1 tensor")
    t = dict(tensors)
    t["ema.evil"] = torch.zeros(3)
    cases["extra"] = (t, "does not have")
    t = {k: v for k, v in tensors.items() if k.startswith("ema.")}
    cases["one-set"] = (t, "lacks")
    return cases


@pytest.mark.parametrize("case", ["int-dtype", "shape", "flat", "missing", "missing-raw", "extra", "one-set"])
def test_tensors_must_match_the_network(case, good, no_instantiate_no_weights, tmp_path):
    tensors, match = _tensor_cases(good[2])[case]
    path = craft(tmp_path / "t.safetensors", good, tensors=tensors)
    refused(path, no_instantiate_no_weights, match)
    with pytest.raises(UsageError):
        load_weights(path, "raw")
    assert no_instantiate_no_weights == []


def test_half_precision_weights_load_as_float32(good, tmp_path):
    tensors = {k: v.half() for k, v in good[2].items()}
    loaded = load_checkpoint(craft(tmp_path / "half.safetensors", good, tensors=tensors))
    p = next(loaded.precond.parameters())
    assert p.dtype == torch.float32


def test_registry_schemas_cover_the_constructors():
    """Each registered class's schema names exactly its constructor's options (shape facts aside)."""
    shape_facts = {"spatial_dims", "in_channels", "out_channels"}
    for registry, facts in ((NETWORKS, shape_facts), (TASKS, set())):
        for name, buildable in registry.items():
            params = set(inspect.signature(buildable.load()).parameters) - {"self"}
            assert set(buildable.options) == params - facts, name


def test_unknown_weight_set_is_a_usage_error(good):
    with pytest.raises(UsageError, match="weights"):
        load_checkpoint(good[0], weights="best")


# ------------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    import numpy as np

    path = tmp_path_factory.mktemp("scan") / "scan.nii.gz"
    write_nifti(Volume(np.random.default_rng(0).random((8, 8, 2)).astype(np.float32), np.eye(4), {}), path)
    return path


def test_reconstruct_with_a_crafted_checkpoint_exits_2(good, victims, scan, tmp_path):
    folder, victim, untouched = victims
    attacks = _attacks(victim, folder)
    for n, case in enumerate(("open-as-model", "unlink-as-task", "system-as-model", "nested-in-channels")):
        path = craft(tmp_path / f"evil{n}.safetensors", good, model_spec=attacks[case])
        args = ["progress=false", f"input={scan}", f"out={tmp_path / f'out{n}'}", f"checkpoint={path}"]
        assert run_command("reconstruct", args) == 2
    untouched()
    assert not list((tmp_path / "out0").glob("*.nii.gz"))


def test_cli_prints_one_line_for_a_refused_checkpoint(good, victims, scan, tmp_path):
    folder, victim, untouched = victims
    path = craft(tmp_path / "evil.safetensors", good, model_spec=_attacks(victim, folder)["system-as-task"])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "medrecon", "reconstruct", f"input={scan}", f"out={tmp_path / 'o'}"]
    proc = subprocess.run([*cmd, f"checkpoint={path}"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    output = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(output) == 1 and "spec.task._target_='os.system'" in output[0], output
    assert "Traceback" not in proc.stderr
    untouched()


def test_the_size_check_draws_no_random_numbers():
    """``build_precond`` builds on the meta device first: the initial weights stay those of the seed."""
    spec = ModelSpec(model=MODEL, task=TASK, spatial_dims=2, image_channels=1, cond_channels=1)
    torch.manual_seed(7)
    direct = spec._construct().state_dict()
    torch.manual_seed(7)
    checked = spec.build_precond().state_dict()
    assert all(torch.equal(direct[k], checked[k]) for k in direct)


@pytest.mark.parametrize("name", ["demo_sr4x", "demo_mri_r4"])
def test_bundled_demo_weights_pass_every_check_and_load(name):
    path = REPO / "medrecon" / "assets" / "weights" / f"{name}.safetensors"
    checked = check_checkpoint(path)
    loaded = load_checkpoint(path)
    assert checked.parameters == sum(p.numel() for p in loaded.precond.parameters())
    assert loaded.task.name == name.removeprefix("demo_")
    # both retrained 2026-11-30: the card records the data and the in-plane spacing seen in training (sr4x with
    # its scale augmentation, 2 mm / [0.6, 1.5]; mri_r4 without augmentation, the sample scan's 2 mm)
    expected = (4 / 3, 10 / 3) if name == "demo_sr4x" else (2.0, 2.0)
    assert loaded.card.data.volumes == 1
    assert loaded.card.data.plane_spacing == pytest.approx(expected)


# ------------------------------------------------------------------------------------------------ latent
AE = {
    "_target_": "monai.networks.nets.AutoencoderKL",
    "channels": [4, 4],
    "num_res_blocks": 1,
    "attention_levels": [False, False],
    "latent_channels": 2,
    "norm_num_groups": 4,
    "with_encoder_nonlocal_attn": False,
    "with_decoder_nonlocal_attn": False,
}


def latent_spec_dict() -> dict:
    return {
        **base_spec(),
        "image_channels": 2,
        "cond_channels": 2,
        "objective": "latent",
        "latent": {"autoencoder": dict(AE), "scale": 0.8, "condition": "encode"},
    }


@pytest.fixture(scope="module")
def good_latent(tmp_path_factory):
    """A valid tiny latent checkpoint (its autoencoder's weights inside, ``ae.*``): path, metadata, tensors."""
    spec = ModelSpec(**latent_spec_dict())
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("latent") / "latent.safetensors"
    save_checkpoint(
        path,
        raw=spec.build_precond(),
        ema=None,
        spec=spec,
        encoder=Encoder(),
        config={},
        step=2,
        frozen=spec.build_frozen(),
    )
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return path, metadata, tensors


def test_a_latent_checkpoint_holds_its_autoencoder_and_loads(good_latent, no_instantiate_no_weights):
    path, _, tensors = good_latent
    assert any(k.startswith("ae.") for k in tensors) and any(k.startswith("ema.") for k in tensors)
    loaded = load_checkpoint(path)
    assert loaded.codec is not None and loaded.codec.latent_channels == 2 and loaded.codec.scale == 0.8
    ae_state = loaded.codec.autoencoder.state_dict()
    assert all(torch.equal(ae_state[k[3:]], v) for k, v in tensors.items() if k.startswith("ae."))
    assert check_checkpoint(path).parameters == sum(p.numel() for p in loaded.precond.parameters())


def _latent_attacks(victim: Path, folder: Path) -> dict[str, tuple[dict, str]]:
    """Latent specs that name code, hide it in the autoencoder's options, or describe absurd sizes."""
    system = {"_target_": "os.system", "_args_": [f"touch {folder / 'pwned'}"]}
    opener = {"_target_": "builtins.open", "_args_": [str(victim), "w"]}
    cases: dict[str, tuple[dict, str]] = {}

    def case(name: str, match: str, **latent_changes) -> None:
        spec = latent_spec_dict()
        for key, value in latent_changes.items():
            if key == "ae":
                spec["latent"]["autoencoder"] = value
            elif key == "spec":
                spec.update(value)
            else:
                spec["latent"][key] = value
        cases[name] = (spec, match)

    case("ae-is-os.system", "spec.latent.autoencoder", ae=system)
    case("ae-is-open", "spec.latent.autoencoder", ae=opener)
    case(
        "ae-unregistered-monai-class",
        "spec.latent.autoencoder",
        ae={**AE, "_target_": "monai.networks.nets.VQVAE"},
    )
    case("ae-code-in-channels", "channels", ae={**AE, "channels": [4, system]})
    case("ae-code-in-option", "norm_eps", ae={**AE, "norm_eps": opener})
    case("ae-recursive-key", "_recursive_", ae={**AE, "_recursive_": False})
    case("ae-unknown-option", "spatial_dims", ae={**AE, "spatial_dims": 3})  # shape facts are the spec's
    case("ae-bool-for-int", "latent_channels", ae={**AE, "latent_channels": True})
    case("ae-one-level-huge", "channels", ae={**AE, "channels": [10**6, 4]})
    case(
        "ae-absurd-network",
        "parameters",
        ae={**AE, "channels": [4096] * 8, "attention_levels": [False] * 8, "num_res_blocks": 16},
    )
    case("ae-groups-do-not-divide", "norm_num_groups", ae={**AE, "norm_num_groups": 3})
    case("scale-nan", "scale", scale=float("nan"))
    case("scale-negative", "scale", scale=-1.0)
    case("scale-string", "scale", scale="0.8")
    case("condition-unknown", "condition", condition="os.system")
    case("window-of-other-dims", "window", window=[8, 8, 8])  # the spec is 2D
    case("window-bool", "window", window=[True, 8])
    case("window-huge", "window", window=[10**9, 8])
    case("window-code", "window", window=system)
    case("latent-missing-field", "missing", spec={"latent": {"autoencoder": dict(AE), "scale": 0.8}})
    case(
        "latent-extra-field", "unknown key", spec={"latent": {**latent_spec_dict()["latent"], "evil": system}}
    )
    case("latent-for-a-diffusion-model", "latent", spec={"objective": "diffusion"})
    case("latent-model-without-latent", "latent", spec={"latent": None})
    case("latent-not-a-mapping", "latent", spec={"latent": [1, 2]})
    case("objective-unknown", "objective", spec={"objective": "os.system"})
    case("channels-not-the-latent-ones", "channels", spec={"image_channels": 1, "cond_channels": 1})
    case("context-with-latent", "context", spec={"context": 1})
    return cases


@pytest.mark.parametrize(
    "case",
    [
        "ae-is-os.system",
        "ae-is-open",
        "ae-unregistered-monai-class",
        "ae-code-in-channels",
        "ae-code-in-option",
        "ae-recursive-key",
        "ae-unknown-option",
        "ae-bool-for-int",
        "ae-one-level-huge",
        "ae-absurd-network",
        "ae-groups-do-not-divide",
        "scale-nan",
        "scale-negative",
        "scale-string",
        "condition-unknown",
        "window-of-other-dims",
        "window-bool",
        "window-huge",
        "window-code",
        "latent-missing-field",
        "latent-extra-field",
        "latent-for-a-diffusion-model",
        "latent-model-without-latent",
        "latent-not-a-mapping",
        "objective-unknown",
        "channels-not-the-latent-ones",
        "context-with-latent",
    ],
)
def test_crafted_latent_specs_are_refused_and_run_nothing(
    case, good_latent, victims, no_instantiate_no_weights, tmp_path
):
    folder, victim, untouched = victims
    spec, match = _latent_attacks(victim, folder)[case]
    path = craft(tmp_path / "evil.safetensors", good_latent, model_spec=spec)
    refused(path, no_instantiate_no_weights, match)
    untouched()


def test_an_autoencoder_spec_names_only_registered_autoencoders(good, no_instantiate_no_weights, tmp_path):
    """``objective=autoencoder`` resolves ``model`` among the autoencoders, any other objective among the
    denoiser networks: neither registry's names pass as the other's."""
    for model, objective in ((MODEL, "autoencoder"), (AE, "diffusion"), (AE, "regression"), (AE, "latent")):
        spec = {**base_spec(), "model": dict(model), "objective": objective}
        if objective == "latent":
            spec["latent"] = latent_spec_dict()["latent"]
        path = craft(tmp_path / "swap.safetensors", good, model_spec=spec)
        refused(path, no_instantiate_no_weights, "spec.model._target_")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ("drop-ae", "lacks"),  # the autoencoder's weights are missing
        ("extra-ae", "does not have"),  # a tensor the autoencoder does not have
        ("reshape-ae", "shape"),
        ("int-ae", "dtype"),
    ],
)
def test_latent_tensor_tables_must_match_the_autoencoder_too(
    edit, match, good_latent, no_instantiate_no_weights, tmp_path
):
    _, _, tensors = good_latent
    tensors = dict(tensors)
    name = sorted(k for k in tensors if k.startswith("ae.") and tensors[k].ndim > 1)[0]
    if edit == "drop-ae":
        tensors = {k: v for k, v in tensors.items() if not k.startswith("ae.")}
    elif edit == "extra-ae":
        tensors["ae.evil.weight"] = torch.zeros(2)
    elif edit == "reshape-ae":
        tensors[name] = torch.zeros(tensors[name].numel())
    else:
        tensors[name] = tensors[name].to(torch.int32)
    path = craft(tmp_path / "bad.safetensors", good_latent, tensors=tensors)
    refused(path, no_instantiate_no_weights, match)
