"""The command line's vocabulary: renamed options, unknown keys with a suggestion, one-line errors, per-command
--help read from the YAML comments (medrecon.options, medrecon.confdoc)."""

import pytest
import yaml

from medrecon.cli import COMMANDS, conf_dir, main
from medrecon.confdoc import command_doc, read_config_doc
from medrecon.options import RENAMED, Renamed, upgrade_renamed


def err_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "train.amp=false"], "medrecon train: train.amp was renamed: use precision=fp32"),
        (["train", "train.amp=true"], "medrecon train: train.amp was renamed: use precision=auto"),
        (
            ["train", "train.compile=true", "out=o"],
            "medrecon train: train.compile was renamed: use compile=true",
        ),
        (["train", "train.progress=false"], "medrecon train: train.progress was renamed: use progress=false"),
    ],
)
def test_old_spellings_are_refused_with_the_new_one(capsys, args, expected):
    assert main(args) == 2
    assert err_lines(capsys) == [expected]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["reconstruct", "smaples=4", "input=x", "out=y"],
            "medrecon reconstruct: unknown option 'smaples'; did you mean 'samples'?",
        ),
        (["reconstruct", "sampler.stepz=3"], "unknown option 'sampler.stepz'; did you mean 'sampler.steps'?"),
        (
            ["reconstruct", "encoder.clipp=true"],
            "unknown option 'encoder.clipp'; did you mean 'encoder.clip'?",
        ),
        (
            ["train", "data.patch_sise=32"],
            "unknown option 'data.patch_sise'; did you mean 'data.patch_size'?",
        ),
        (
            ["train", "-m", "trian.lr=1e-4,2e-4", "out=o"],
            "unknown option 'trian.lr'; did you mean 'train.lr'?",
        ),
        (["reconstruct", "task=mri_r5"], "unknown task 'mri_r5': choose one of denoise, mri_r4, mri_r8"),
        (["reconstruct", "model=unet_tiny"], "'model' is not an option of reconstruct"),
        (["train", "experiment=demo_sr4x"], "experiment is added, not chosen: use +experiment=demo_sr4x"),
        (["evaluate", "zzz=1"], "medrecon evaluate: unknown option 'zzz'"),
        (
            ["train", "data.slice_split.val=0.1"],
            "data.slice_split is null here, so data.slice_split.val cannot",
        ),
    ],
)
def test_unknown_keys_and_choices_get_one_line_with_a_suggestion(capsys, args, expected):
    assert main(args) == 2
    lines = err_lines(capsys)
    assert len(lines) == 1 and expected in lines[0], lines
    assert "HYDRA_FULL_ERROR" not in lines[0] and "Traceback" not in lines[0]


def test_shared_options_are_top_level_in_train(capsys):
    """`medrecon train progress=false` used to end in a raw Hydra error; now it is the option."""
    args = ["train", "manifest=m.jsonl", "out=o", "progress=false", "precision=fp32", "compile=true"]
    assert main([*args, "--cfg", "job"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["progress"], cfg["precision"], cfg["compile"]) == (False, "fp32", True)
    assert not {"amp", "compile", "progress"} & set(cfg["train"])


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_lists_the_commands_own_options_with_their_comments(capsys, command):
    if not (conf_dir() / f"{command}.yaml").is_file():
        pytest.skip(f"no conf/{command}.yaml")
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    doc = command_doc(command)
    assert out.startswith("usage: medrecon " + command)
    for option in doc.options:
        assert f"  {option.key}=" in out, option.key
        if option.comment:
            assert option.comment.split()[0] in out
    for group in doc.groups:
        assert f"  {group.name}=" in out and all(choice in out for choice in group.choices)
    # only this command's groups: reconstruct and evaluate take the network from the checkpoint
    section = out.split("config groups", 1)[1].split("\noptions", 1)[0] if doc.groups else ""
    shown = {
        line.split("=")[0].strip() for line in section.splitlines() if line.startswith("  ") and "=" in line
    }
    others = {"task", "model", "data", "sampler", "guidance"} - {g.name for g in doc.groups}
    assert {g.name for g in doc.groups} <= shown and not others & shown, shown


def test_reconstruct_help_shows_comments_and_choices(capsys):
    assert main(["reconstruct", "--help"]) == 0
    out = capsys.readouterr().out
    assert "samples=1" in out and "posterior samples per slice" in out
    assert "sampler=" in out and "[mmse]" in out and "dpmpp" in out
    assert "model=" not in out and "data=" not in out and "hydra/" not in out


def test_yaml_comments_are_read_with_nesting_continuations_and_sections(tmp_path):
    (tmp_path / "sampler").mkdir()
    for name in ("a", "b"):
        (tmp_path / "sampler" / f"{name}.yaml").write_text("steps: 1\n")
    path = tmp_path / "cmd.yaml"
    path.write_text(
        "# medrecon cmd x=1\n"
        "# Does a thing.\n"
        "defaults:\n"
        "  - sampler: a      # the sampler\n"
        "  - _self_\n"
        "  - override hydra/job_logging: stdout\n"
        "\n"
        "x: ???   # the input\n"
        "y: 2     # first line\n"
        "         #   second line\n"
        "# a section comment\n"
        "node:\n"
        "  inner: [1, 2]   # with # inside\n"
        "  bare: null\n"
        "hydra:\n"
        "  run:\n"
        "    dir: .\n"
    )
    doc = read_config_doc(path, tmp_path)
    assert doc.header == ("medrecon cmd x=1", "Does a thing.")
    assert [(g.name, g.default, g.comment, g.choices) for g in doc.groups] == [
        ("sampler", "a", "the sampler", ("a", "b"))
    ]
    assert [(o.key, o.default, o.comment, o.section) for o in doc.options] == [
        ("x", "???", "the input", ""),
        ("y", 2, "first line second line", ""),
        ("node.inner", [1, 2], "with # inside", "a section comment"),
        ("node.bare", None, "", "a section comment"),
    ]
    assert doc.option("x").required and doc.option("node.inner").type == "list"
    assert doc.option("node.bare").meaning == "a section comment"


def test_renamed_table_and_the_upgrade_of_stored_keys():
    amp = next(r for r in RENAMED["train"] if r.old == "train.amp")
    assert amp.message("false") == "train.amp was renamed: use precision=fp32"
    assert amp.message(None) == "train.amp was renamed: use precision=auto|fp32"
    assert Renamed("a.b", "c").message("3") == "a.b was renamed: use c=3"
    old = {"train.amp": True, "train.compile": False, "train.progress": False, "train.lr": 1e-3}
    assert upgrade_renamed("train", old) == {
        "precision": "auto",
        "compile": False,
        "progress": False,
        "train.lr": 1e-3,
    }
    assert upgrade_renamed("train", {"train.amp": False})["precision"] == "fp32"
    assert upgrade_renamed("train", {"train.amp": True, "precision": "bf16"}) == {"precision": "bf16"}
    for command, entries in RENAMED.items():  # the shipped configs no longer spell the old names
        keys = {o.key for o in command_doc(command).options}
        assert not {r.old for r in entries} & keys
        assert all(r.new in keys for r in entries)
