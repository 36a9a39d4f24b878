"""``medrecon <command> [hydra overrides]``: compose the command's Hydra config and call one function.

No science lives here. Each command is a config in ``conf/<command>.yaml`` and a function ``run(cfg) -> int`` in
the module named below. Exit codes follow the contract: 0 success, 3 partial failure (reconstruct), 2 usage or
configuration errors, 1 an unexpected error.
"""

from __future__ import annotations

import importlib
import logging
import sys

from medrecon.confdoc import conf_dir
from medrecon.errors import UsageError

__all__ = ["COMMANDS", "UsageError", "conf_dir", "main", "run_command"]

COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": (
        "medrecon.prepare",
        "scan an archive and write a JSONL manifest (ids, geometry, split, status)",
    ),
    "train": ("medrecon.train.run", "train the conditional diffusion U-Net for a task"),
    "distill": (
        "medrecon.train.distill",
        "distil a trained checkpoint into a few-step sampler (same format)",
    ),
    "reconstruct": (
        "medrecon.recon.run",
        "reconstruct a folder, file or manifest with diffusion or a baseline",
    ),
    "evaluate": (
        "medrecon.evaluate.run",
        "degrade ground truth, reconstruct, report PSNR/SSIM/NMSE and figures",
    ),
    "info": ("medrecon.info", "what a checkpoint is: task, network, training data and spacing, metrics"),
    "demo": ("medrecon.demo", "materialise the sample archive, reconstruct it with the demo model, evaluate"),
    "sample-data": ("medrecon.sample", "write the bundled sample scan as a DICOM series and a NIfTI file"),
}

EXIT_USAGE = 2

log = logging.getLogger("medrecon")


#: Hydra's flags: those that take a value, and those that stand alone; the command's options are checked
#: (``medrecon.options.check_overrides``) only when no other flag is given (Hydra handles those runs).
_FLAGS_WITH_VALUE = frozenset({"--cfg", "-c", "--package", "-p"})
_FLAGS_ALONE = frozenset({"--resolve", "-m", "--multirun"})
_HELP = frozenset({"--help", "-h"})


def _options_only(overrides: list[str]) -> list[str] | None:
    """``overrides`` without Hydra's flags ``--cfg X``, ``-p X``, ``--resolve``, ``-m``; ``None`` when another
    flag is given (``--info``, ``--hydra-help``, ``--config-dir``, ...): then Hydra alone reads the line."""
    kept: list[str] = []
    skip = False
    for arg in overrides:
        if skip:
            skip = False
        elif arg in _FLAGS_WITH_VALUE:
            skip = True
        elif arg in _FLAGS_ALONE:
            continue
        elif arg.startswith("-"):
            return None
        else:
            kept.append(arg)
    return kept


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = [
        "usage: medrecon <command> [key=value ...] [--help] [--cfg job] [-m]",
        "",
        "Reconstruct medical scans with conditional diffusion models. Arguments are Hydra overrides.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {doc}" for name, (_, doc) in COMMANDS.items()]
    lines += ["", "Run 'medrecon <command> --help' for a command's options and defaults."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if argv[0] in {"-V", "--version"}:
        from medrecon import __version__

        print(f"medrecon {__version__}")
        return 0
    command, overrides = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"medrecon: unknown command {command!r}; choose one of {', '.join(COMMANDS)}\n", file=sys.stderr
        )
        print(_usage(), file=sys.stderr)
        return EXIT_USAGE
    code = run_command(command, overrides)
    return code


def missing_required(command: str, overrides: list[str]) -> list[str]:
    """The required options of ``conf/<command>.yaml`` (top-level ``???`` values) that ``overrides`` leaves
    unset. Empty when a Hydra flag (``--help``, ``--cfg``, ``-m``, ...) is given: Hydra handles those."""
    from omegaconf import OmegaConf

    if any(o.startswith("-") for o in overrides):
        return []
    cfg = OmegaConf.load(conf_dir() / f"{command}.yaml")
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    return [
        str(key)
        for key in cfg
        if key not in ("defaults", "hydra") and OmegaConf.is_missing(cfg, key) and key not in given
    ]


def run_command(command: str, overrides: list[str]) -> int:
    """Run one command through Hydra with ``overrides`` as its command line; returns the exit code."""
    import hydra
    from omegaconf import DictConfig
    from omegaconf.errors import MissingMandatoryValue

    if any(arg in _HELP for arg in overrides):
        from medrecon.confdoc import help_text

        print(help_text(command, conf_dir()))
        return 0
    options = _options_only(overrides)
    if options is not None:
        from medrecon.options import check_overrides

        try:
            multirun = bool({"-m", "--multirun"} & set(overrides))
            check_overrides(command, options, conf_dir(), multirun=multirun)
        except UsageError as err:
            print(f"medrecon {command}: {err}", file=sys.stderr)
            return EXIT_USAGE
    missing = missing_required(command, overrides)
    if missing:
        needed = " ".join(f"{key}=..." for key in missing)
        print(f"medrecon {command}: missing required option(s): {needed}", file=sys.stderr)
        print(f"Run 'medrecon {command} --help' for the options.", file=sys.stderr)
        return EXIT_USAGE
    module_name = COMMANDS[command][0]
    state: dict[str, int | bool] = {"started": False, "code": 0}

    def task(cfg: DictConfig) -> None:
        state["started"] = True
        module = importlib.import_module(module_name)
        try:
            code = module.run(cfg)
        except (UsageError, MissingMandatoryValue) as err:
            log.error("%s", err)
            code = EXIT_USAGE
        # in a multirun the worst code wins
        state["code"] = max(int(state["code"]), int(code or 0))

    wrapped = hydra.main(config_path=str(conf_dir()), config_name=command, version_base="1.3")(task)
    saved_argv = sys.argv
    sys.argv = [f"medrecon {command}", *overrides]
    try:
        wrapped()
    except SystemExit as exc:  # Hydra exits on bad overrides, --help, --cfg
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code != 0 and not state["started"]:
            return EXIT_USAGE  # the config never composed: a usage error
        return code
    except Exception as exc:  # an error while Hydra composes the config, before the command ran
        if state["started"]:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"medrecon {command}: configuration error: {first}", file=sys.stderr)
        print(f"Run 'medrecon {command} --help' for the options.", file=sys.stderr)
        return EXIT_USAGE
    finally:
        sys.argv = saved_argv
    return int(state["code"])


if __name__ == "__main__":  # pragma: no cover
    # Import through the package so that exception classes are the ones the commands raise.
    from medrecon.cli import main as _main

    sys.exit(_main())
