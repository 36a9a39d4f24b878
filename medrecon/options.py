"""One vocabulary across commands: renamed options, and overrides checked against a command's config.

Every command spells the same idea the same way (docs/configuration.md holds the table; ``tests/
test_config_table.py`` checks it). An option that was renamed stays known here, so that its old spelling is
answered with the new one instead of a generic error, and so that a stored training config that still uses it
compares equal to a current one (``medrecon.train.resume``).

:func:`check_overrides` runs before Hydra composes a command's config: old spellings, keys the config does not
have (with the closest valid key as a suggestion), group choices that do not exist, and any other composition
error become one :class:`medrecon.errors.UsageError` line instead of Hydra's multi-line report.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medrecon.errors import UsageError

__all__ = ["RENAMED", "Renamed", "check_overrides", "config_keys", "renamed", "upgrade_renamed"]


@dataclass(frozen=True)
class Renamed:
    """An option that moved: ``old`` is now ``new``, its values translated by ``values`` (the old value's
    command-line spelling, lower case -> the new value; an empty mapping keeps the value as it is)."""

    old: str
    new: str
    values: Mapping[str, str] = field(default_factory=dict)

    def new_value(self, value: Any) -> Any:
        """``value`` of ``old`` as a value of ``new`` (unchanged when the mapping does not name it)."""
        text = ("true" if value else "false") if isinstance(value, bool) else str(value).strip().lower()
        return self.values.get(text, value)

    def message(self, value: str | None = None) -> str:
        """``train.amp was renamed: use precision=fp32`` (without a value: every new value is listed)."""
        if value is None or value == "":
            shown = "|".join(dict.fromkeys(self.values.values())) if self.values else "..."
        else:
            shown = str(self.new_value(value)) if self.values else value
        return f"{self.old} was renamed: use {self.new}={shown}"


#: Per command, the option spellings that changed (old dotted key -> its replacement).
RENAMED: dict[str, tuple[Renamed, ...]] = {
    "train": (
        # train.amp=true was bf16 autocast on CUDA and fp32 on the CPU: exactly precision=auto
        Renamed("train.amp", "precision", {"true": "auto", "false": "fp32"}),
        Renamed("train.compile", "compile"),
        Renamed("train.progress", "progress"),
    ),
}


#: Config groups that no command's defaults list holds: they are added (``+experiment=demo_sr4x``).
ADDED_GROUPS = frozenset({"experiment"})


def renamed(command: str, key: str) -> Renamed | None:
    """The rename of ``key`` in ``command`` (or of a key above it: ``train.amp.x`` -> ``train.amp``)."""
    for entry in RENAMED.get(command, ()):
        if key == entry.old or key.startswith(entry.old + "."):
            return entry
    return None


def upgrade_renamed(command: str, leaves: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted ``key -> value`` pairs with old spellings replaced by the new keys and values; a new key that is
    already present wins over the old one (a config never holds both unless edited by hand)."""
    out = dict(leaves)
    for entry in RENAMED.get(command, ()):
        if entry.old in out:
            value = out.pop(entry.old)
            out.setdefault(entry.new, entry.new_value(value))
    return out


def config_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a config (``DictConfig`` or mapping): nodes and leaves (``encoder``,
    ``encoder.clip``), Hydra's own ``hydra`` node left out."""
    keys: list[str] = []
    for key in cfg:
        if not prefix and key == "hydra":
            continue
        dotted = f"{prefix}.{key}" if prefix else str(key)
        keys.append(dotted)
        try:
            value = cfg[key]
        except Exception:  # noqa: BLE001 - a missing (???) or unresolvable value is still a key
            continue
        if isinstance(value, Mapping) or hasattr(value, "keys"):
            keys += config_keys(value, dotted)
    return keys


def suggestion(key: str, known: Iterable[str]) -> str:
    """``; did you mean 'samples'?`` for the closest known key, or ``""`` when none is close."""
    known = list(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not close and "." in key:  # a misspelt leaf under the right node: compare the last parts
        leaf = key.rsplit(".", 1)[1]
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in known}
        close = [by_leaf[c] for c in difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)]
    return f"; did you mean {close[0]!r}?" if close else ""


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _compose(conf: Path, command: str, overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name=command, overrides=overrides, return_hydra_config=True)


def check_overrides(command: str, overrides: list[str], conf: Path, *, multirun: bool = False) -> None:
    """Check a command's ``key=value`` overrides before Hydra runs it.

    Args:
        command: the command (its config is ``conf/<command>.yaml``).
        overrides: Hydra overrides, without Hydra's flags (``--cfg``, ``-m``, ...).
        conf: the configuration folder.
        multirun: sweeps (``key=a,b``) are allowed: keys and group choices are checked, values are not composed.

    Raises:
        UsageError: one line naming the problem: an old spelling and the new one; a key the config does not
            have, with the closest valid key; a group choice that does not exist (with the choices); a group the
            command does not use; or the first line of any other error Hydra meets composing the config.
    """
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if GlobalHydra.instance().is_initialized():  # called inside a running Hydra app: Hydra checks them
        return
    for text in overrides:  # before parsing: `train.amp` alone is no valid override, but still an old name
        entry = renamed(command, text.split("=", 1)[0].lstrip("+~"))
        if entry is not None:
            raise UsageError(entry.message(text.split("=", 1)[1] if "=" in text else None))
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise UsageError(f"cannot read the option(s): {_first_line(err)}") from None
    errors = (HydraException, OmegaConfBaseException, ValueError, KeyError)
    if not multirun:
        try:
            _compose(conf, command, overrides)
            return
        except errors:
            pass  # find out which override it was, below
    groups = {p.name for p in conf.iterdir() if p.is_dir()}
    used = {g for g in _compose(conf, command, []).hydra.runtime.choices if not g.startswith("hydra")}
    for o in parsed:
        key = o.key_or_group
        if key not in groups or o.package:
            continue
        added = o.is_add() or o.is_force_add()  # +experiment=NAME and the like: the user adds a group
        if not added and key in ADDED_GROUPS:
            raise UsageError(f"{key} is added, not chosen: use +{o.input_line}")
        if not added and key not in used:
            listed = ", ".join(sorted(used)) or "none"
            raise UsageError(f"{key!r} is not an option of {command} (its config groups: {listed})")
        values = [o.value()] if not o.is_sweep_override() else list(getattr(o.value(), "list", []))
        _check_choices(key, values, conf)
    chosen = [
        o.input_line
        for o in parsed
        if o.key_or_group in groups and not o.is_sweep_override() and not o.is_delete() and not o.package
    ]
    try:
        base = _compose(conf, command, chosen)
    except errors as err:  # e.g. an experiment written for another command
        raise UsageError(f"configuration error: {_first_line(err)}") from None
    known = config_keys(base)
    for o in parsed:
        key = o.key_or_group
        if o.package or key in groups or o.is_add() or o.is_force_add():
            continue
        if key not in known and not key.startswith("hydra") and not _under_open_node(base, key):
            raise UsageError(f"unknown option {key!r}{suggestion(key, known)}")
    if not multirun:  # every key exists: some other problem (a value, an experiment that does not fit)
        try:
            _compose(conf, command, overrides)
        except errors as err:
            below_null = [
                o.key_or_group for o in parsed if o.key_or_group not in known and "." in o.key_or_group
            ]
            if below_null:  # data.slice_split.val=0.1 while data.slice_split is null
                parent = below_null[0].rsplit(".", 1)[0]
                raise UsageError(
                    f"{parent} is null here, so {below_null[0]} cannot be set alone: give {parent} whole "
                    f"(e.g. '{parent}={{key: value, ...}}')"
                ) from None
            raise UsageError(f"configuration error: {_first_line(err)}") from None


def _check_choices(group: str, values: list[Any], conf: Path) -> None:
    choices = sorted(p.stem for p in (conf / group).glob("*.yaml"))
    for value in values:
        if value is None or str(value) == "null" or str(value) in choices:
            continue
        hint = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.6)
        maybe = f"; did you mean {hint[0]!r}?" if hint else ""
        raise UsageError(f"unknown {group} {str(value)!r}: choose one of {', '.join(choices)}{maybe}")


def _under_open_node(cfg: Any, key: str) -> bool:
    """Whether ``key`` lies below a node whose value is ``null`` or a list (``slice_split.axis`` when
    ``slice_split`` is null): Hydra decides what such an override means."""
    from omegaconf import OmegaConf

    parts = key.split(".")
    for n in range(1, len(parts)):
        parent = ".".join(parts[:n])
        try:
            value = OmegaConf.select(cfg, parent, throw_on_missing=False)
        except Exception:  # noqa: BLE001
            return False
        if value is None and parent in config_keys(cfg):
            return True
        if OmegaConf.is_list(value):
            return True
    return False
