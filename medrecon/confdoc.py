"""What ``conf/<command>.yaml`` says about its options: keys, defaults, types and the ``# comments`` beside them.

The YAML files are the one place where an option's default and meaning are written. This module reads them as
text (the comments are data that a YAML parser drops) and as YAML (the values), so that ``medrecon <command>
--help`` and the table in docs/configuration.md (``scripts/config_table.py``) show exactly what the files say.

The files follow one layout, which the reader relies on:

- leading ``#`` lines: the usage line(s), then a description;
- ``defaults:`` with ``- group: choice  # comment`` entries (``_self_`` and ``override hydra/...`` are skipped);
- ``key: value  # comment``, nested by indentation; a comment-only line indented deeper than the key above it
  continues that key's comment, one at or left of it introduces the next key (a section comment);
- ``hydra:`` (Hydra's own settings, not options of the command) is left out.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ConfigDoc",
    "GroupDoc",
    "OptionDoc",
    "command_doc",
    "conf_dir",
    "group_choices",
    "help_text",
    "read_config_doc",
    "type_name",
]

REQUIRED = "???"
_SKIPPED_TOP = ("defaults", "hydra")
_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w-]*)\s*:(?P<rest>.*)$")
_DEFAULT = re.compile(
    r"^\s*-\s*(?P<override>override\s+)?(?P<group>[\w/@.-]+)\s*(?::\s*(?P<choice>[^#\s]+))?"
)


def conf_dir() -> Path:
    """The configuration folder: inside the installed package (wheel) or at the top of a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError("medrecon's conf/ folder is missing from this installation")


def type_name(value: Any) -> str:
    """The option type the table and ``--help`` show for a YAML default: ``bool``, ``int``, ``float``, ``str``,
    ``list``, ``map`` or ``null`` (``???``, a required value, is a ``str``: a path or a name)."""
    if value is None:
        return "null"
    for kind, name in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"), (list, "list")):
        if isinstance(value, kind):
            return name
    return "map"


@dataclass(frozen=True)
class OptionDoc:
    """One option of a config file.

    Attributes:
        key: the dotted key (``encoder.clip``), as written on the command line.
        default: the YAML value (``"???"``: required).
        comment: its own comment (continuation lines joined); may be empty.
        section: the comment of the nearest enclosing node that has one (``encoder:``'s for
            ``encoder.fit``); empty at the top level.
    """

    key: str
    default: Any
    comment: str = ""
    section: str = ""

    @property
    def meaning(self) -> str:
        """The comment, else the section's: what a table row standing alone says about the option."""
        return self.comment or self.section

    @property
    def required(self) -> bool:
        return self.default == REQUIRED

    @property
    def type(self) -> str:
        return type_name(self.default)

    @property
    def shown_default(self) -> str:
        """The default as it is written on the command line (``true``, ``null``, ``[-1000, 1000]``)."""
        return _yaml_text(self.default)


@dataclass(frozen=True)
class GroupDoc:
    """A config group in a command's defaults list (``task``, ``sampler``, ...).

    Attributes:
        name: the group (``task``).
        default: the choice used when none is given (``None``: no choice, e.g. a checkpoint brings the task).
        comment: the comment beside the defaults entry.
        choices: the options in ``conf/<group>/`` (file names without ``.yaml``), sorted.
    """

    name: str
    default: str | None
    comment: str
    choices: tuple[str, ...]


@dataclass(frozen=True)
class ConfigDoc:
    """A config file read for its documentation.

    Attributes:
        name: the file name without ``.yaml`` (the command, or a group's choice).
        header: the leading comment lines (usage, then description), without ``# ``.
        groups: the defaults list's config groups, in order.
        options: every option (leaf key), in file order; ``_target_``-like keys (``_`` prefix) are left out.
    """

    name: str
    header: tuple[str, ...]
    groups: tuple[GroupDoc, ...]
    options: tuple[OptionDoc, ...]

    def option(self, key: str) -> OptionDoc | None:
        return next((o for o in self.options if o.key == key), None)


def _yaml_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return str(value)


def _split_comment(text: str) -> tuple[str, str]:
    """``"value  # comment"`` -> ``("value", "comment")``; a ``#`` inside quotes or a word is not a comment."""
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].strip(), text[i + 1 :].strip()
    return text.strip(), ""


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in node.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out += _leaves(value, dotted)
        else:
            out.append((dotted, value))
    return out


def group_choices(group: str, conf: Path | None = None) -> tuple[str, ...]:
    """The options of config group ``group`` (``conf/<group>/*.yaml`` names), sorted."""
    folder = (conf or conf_dir()) / group
    return tuple(sorted(p.stem for p in folder.glob("*.yaml")))


def _comments(lines: list[str]) -> tuple[list[str], dict[str, list[str]], list[tuple[str, str, str]]]:
    """Read the text: (header lines, comments per dotted key, defaults entries ``(group, choice, comment)``)."""
    header: list[str] = []
    comments: dict[str, list[str]] = {}
    defaults: list[tuple[str, str, str]] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing keys
    last: tuple[int, str] | None = None  # indent and dotted key of the last key line (or defaults entry)
    pending: list[str] = []  # section comments waiting for the next key
    seen_key = False
    for line in lines:
        stripped = line.strip()
        if not stripped:
            last = None if seen_key else last
            continue
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            if not seen_key:
                header.append(stripped[2:] if stripped.startswith("# ") else stripped[1:])
            elif last is not None and _indent(line) > last[0]:
                comments.setdefault(last[1], []).append(text)
            else:
                pending.append(text)
            continue
        seen_key = True
        in_defaults = bool(stack) and stack[-1][1] == "defaults"
        entry = _DEFAULT.match(line) if in_defaults else None
        if entry is not None:
            _, comment = _split_comment(line)
            group, choice = entry.group("group"), entry.group("choice")
            if not entry.group("override") and choice is not None and group != "_self_":
                defaults.append((group, choice, comment))
                last = (_indent(line), f"defaults/{group}")
                comments[last[1]] = [comment] if comment else []
            pending = []
            continue
        match = _KEY.match(line)
        if match is None:  # a flow value continued on the next line, or a list item: not a key
            continue
        indent = len(match.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [match.group("key")])
        stack.append((indent, match.group("key")))
        _, comment = _split_comment(match.group("rest"))
        comments[dotted] = [comment] if comment else list(pending)
        pending = []
        last = (indent, dotted)
    return header, comments, defaults


def read_config_doc(path: str | Path, conf: Path | None = None) -> ConfigDoc:
    """Read one config file (a command's primary config or a group's option) for its documentation.

    Args:
        path: the YAML file.
        conf: the configuration folder that holds its groups (default: :func:`conf_dir`).
    """
    path = Path(path)
    text = path.read_text()
    header, comments, defaults = _comments(text.splitlines())
    values = yaml.safe_load(text) or {}
    body = {k: v for k, v in values.items() if k not in _SKIPPED_TOP}
    options = []
    for key, value in _leaves(body):
        if any(part.startswith("_") for part in key.split(".")):
            continue
        parts = key.split(".")
        nodes = [" ".join(comments.get(".".join(parts[:n]), [])) for n in range(1, len(parts))]
        section = next((c for c in reversed(nodes) if c), "")
        comment = " ".join(comments.get(key, []))
        options.append(OptionDoc(key=key, default=value, comment=comment, section=section))
    groups = tuple(
        GroupDoc(
            name=group,
            default=None if choice == "null" else choice,
            comment=" ".join(comments.get(f"defaults/{group}", [])),
            choices=group_choices(group, conf),
        )
        for group, choice, _ in defaults
        if not group.startswith("hydra")
    )
    return ConfigDoc(name=path.stem, header=tuple(header), groups=groups, options=tuple(options))


def command_doc(command: str, conf: Path | None = None) -> ConfigDoc:
    """The documentation of ``conf/<command>.yaml``."""
    conf = conf or conf_dir()
    return read_config_doc(conf / f"{command}.yaml", conf)


def _entry(left: str, text: str, width: int, column: int) -> list[str]:
    """``left`` then ``text`` wrapped at ``width``, continuation lines indented to ``column``."""
    if not text:
        return [f"  {left}"]
    if len(left) + 2 > column - 2:
        return [
            f"  {left}",
            *textwrap.wrap(text, width, initial_indent=" " * column, subsequent_indent=" " * column),
        ]
    first = f"  {left:<{column - 2}}"
    return textwrap.wrap(text, width, initial_indent=first, subsequent_indent=" " * column)


def help_text(command: str, conf: Path | None = None, width: int = 110) -> str:
    """``medrecon <command> --help``: the usage and description from the YAML header, the command's config
    groups with their choices, and its options (``key=default`` and the comment), read from
    ``conf/<command>.yaml`` alone (no group another command uses is listed)."""
    doc = command_doc(command, conf)
    column = 30
    header = list(doc.header)
    lines = [f"usage: {header[0].strip()}" if header else f"usage: medrecon {command} [key=value ...]"]
    lines += [line.rstrip() for line in header[1:]]
    if doc.groups:
        lines += ["", "config groups (group=choice; default in brackets):"]
        for group in doc.groups:
            choices = " | ".join(f"[{c}]" if c == group.default else c for c in group.choices)
            default = "" if group.default is not None else " (default: none)"
            lines += _entry(
                f"{group.name}=", f"{choices}{default}. {group.comment}".rstrip(". "), width, column
            )
        example = (
            "sampler.steps=10"
            if any(g.name == "sampler" for g in doc.groups)
            else f"{doc.groups[0].name}.KEY=..."
        )
        lines.append(f"  a chosen option's own keys: group.key=value (e.g. {example}; --cfg job lists them)")
    lines += ["", "options (key=default):"]
    section = ""
    for option in doc.options:
        if option.section and option.section != section:
            lines += textwrap.wrap(option.section, width, initial_indent="  # ", subsequent_indent="  # ")
        section = option.section
        shown = "(required)" if option.required else option.shown_default
        lines += _entry(f"{option.key}={shown}", option.comment, width, column)
    lines += [
        "",
        f"Arguments are Hydra overrides: key=value, group=choice, +new_key=value. 'medrecon {command} --cfg job'",
        "prints the composed config without running; -m runs a sweep (key=a,b). Every option of every command:",
        "docs/configuration.md.",
    ]
    return "\n".join(lines)
