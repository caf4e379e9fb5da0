"""The command line shared by the training recipes: `[CONFIG] [key=value ...]` and run options.

`pretrain` and `finetune` take a config (a name or a YAML file), dotted overrides, and options
that may come before or after them (`tiny --init-from X train.max_steps=5`). argparse cannot mix
`REMAINDER` with later options, so the top-level parser collects everything after the command
and `parse_run_args` parses it again, intermixed; a mistake there is a `UsageError` (one line,
exit 2), as a mistake in the first parse is.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from w2vkit.config import ConfigError, UsageError

Declare = Callable[[argparse.ArgumentParser, str], None]


def declare_run_args(
    parser: argparse.ArgumentParser, items_nargs: str, *, config_help: str, init_help: str
) -> None:
    """The arguments every training command has."""
    parser.add_argument(
        "items", nargs=items_nargs, metavar="[CONFIG] [key=value ...]", help=config_help
    )
    parser.add_argument("--init-from", metavar="SRC", help=init_help)
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    parser.add_argument(
        "--resume-from",
        metavar="CHECKPOINT",
        help="resume from this checkpoint (e.g. an interval one when checkpoint_last.pt is lost)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start from update 0 in a run directory that holds an earlier run (deletes its "
        "checkpoints and log)",
    )


class _LateParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]  # raises instead
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def parse_run_args(args: argparse.Namespace, declare: Declare, prog: str) -> argparse.Namespace:
    """`args` with the options found among `args.items` taken out and merged in."""
    late_parser = _LateParser(prog=prog)
    declare(late_parser, "*")
    late = late_parser.parse_intermixed_args(args.items)
    early = {k: getattr(args, k, None) for k in vars(late)}
    twice = [k for k, v in vars(late).items() if k != "items" and v and early[k] and v != early[k]]
    if twice:
        flag = "--" + twice[0].replace("_", "-")
        raise UsageError(
            f"{flag} is given twice ({early[twice[0]]!r} and {getattr(late, twice[0])!r}); give it once"
        )
    merged = {k: early[k] or v for k, v in vars(late).items()}
    return argparse.Namespace(**(vars(args) | merged | {"items": late.items}))


def config_items(items: list[str], init_from: str | None) -> tuple[str | None, list[str]]:
    """(the config file or name, or None; the `key=value` overrides, `--init-from` among them as
    `train.init_from`) of a training command's items."""
    files = [item for item in items if "=" not in item]
    overrides = [item for item in items if "=" in item]
    if len(files) > 1:
        raise ConfigError(
            f"give at most one config file, got {', '.join(files)} (overrides need key=value)"
        )
    if init_from:
        overrides.append(f"train.init_from={init_from}")
    return (files[0] if files else None), overrides


__all__ = ["config_items", "declare_run_args", "parse_run_args"]
