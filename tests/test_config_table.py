"""docs/configuration.md's option tables are generated from conf/*.yaml and current; one name means one type
and one default in every command (scripts/config_table.py holds the few documented exceptions)."""

import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import config_table as ct  # noqa: E402

from medrecon.cli import COMMANDS  # noqa: E402
from medrecon.confdoc import command_doc, conf_dir  # noqa: E402


def signatures() -> dict[str, dict[str, tuple[str, str]]]:
    """name -> {command: (type, default)} for every config group and option of every command."""
    table: dict[str, dict[str, tuple[str, str]]] = defaultdict(dict)
    for command in COMMANDS:
        if not (conf_dir() / f"{command}.yaml").is_file():
            continue
        doc = command_doc(command)
        for group in doc.groups:
            table[group.name][command] = ("group", str(group.default))
        for option in doc.options:
            table[option.key][command] = (ct.option_type(option.key, option), option.shown_default)
    return table


def nodes() -> dict[str, set[str]]:
    """name -> commands in which it is a node (holds options: ``split`` in prepare)."""
    out: dict[str, set[str]] = defaultdict(set)
    for command in COMMANDS:
        if (conf_dir() / f"{command}.yaml").is_file():
            for option in command_doc(command).options:
                parts = option.key.split(".")
                for n in range(1, len(parts)):
                    out[".".join(parts[:n])].add(command)
    return out


def test_the_documented_tables_are_current():
    text = ct.DOC.read_text()
    assert ct.BEGIN in text and ct.END in text
    assert ct.updated(text, ct.render()) == text, (
        "docs/configuration.md is stale: run python scripts/config_table.py"
    )


def test_the_tables_list_every_option_of_every_command():
    generated = ct.render()
    for command in COMMANDS:
        if (conf_dir() / f"{command}.yaml").is_file():
            assert f"#### medrecon {command}\n" in generated
            for option in command_doc(command).options:
                assert f"| `{option.key}` |" in generated, (command, option.key)


def test_equal_names_mean_equal_types_and_defaults_across_commands():
    table, holders = signatures(), nodes()
    differing = set()
    for name, per_command in table.items():
        if len(set(per_command.values())) > 1:
            differing.add(name)
        if holders.get(name):  # an option in one command, a node of options in another
            differing.add(name)
    unexplained = sorted(differing - set(ct.EXCEPTIONS))
    assert not unexplained, {name: table[name] for name in unexplained}


def test_every_exception_is_a_real_difference():
    table, holders = signatures(), nodes()
    for name in ct.EXCEPTIONS:
        per_command = table.get(name, {})
        assert len(per_command) + len(holders.get(name, ())) >= 2, f"{name}: in one command only"
        assert len(set(per_command.values())) > 1 or holders.get(name), f"{name}: no longer differs"


def test_the_shared_vocabulary_is_spelt_alike():
    table = signatures()
    networks = {
        "train",
        "reconstruct",
        "evaluate",
    }  # the commands that run the network (and those added later)
    assert networks <= set(table["precision"]) and set(table["precision"].values()) == {("str", "auto")}
    assert networks <= set(table["compile"]) and set(table["compile"].values()) == {("bool", "false")}
    assert {"prepare", "train", "reconstruct", "evaluate"} <= set(table["progress"])
    assert set(table["progress"].values()) == {("bool", "true")}
    assert set(table["encoder.clip"].values()) == {("bool", "true")}  # as data.encoder.clip of trained models
    assert set(table["device"].values()) == {("str", "auto")} and set(table["seed"].values()) == {
        ("int", "0")
    }
    train_keys = {o.key for o in command_doc("train").options}  # a micro-batch is not an inference batch
    assert "batch_size" not in train_keys and "train.batch_size" in train_keys
