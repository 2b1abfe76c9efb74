"""The argument parser of crepe's commands: argparse that reports bad input as a UsageError,
and a `crepe train` flag made from its declaration (crepe.config). torch-free."""

from __future__ import annotations

import argparse
import difflib
from typing import Any

from crepe.config import UsageError, default


class Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line) instead of printing usage and exiting."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)  # --frac is not --fraction
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        unknown = message.partition("unrecognized arguments: ")[2].split()
        close = difflib.get_close_matches(unknown[0].split("=")[0], list(self._option_string_actions), n=1) if unknown else []
        hint = f"did you mean {close[0]}? " if close else ""
        raise UsageError(f"{message} ({hint}see {self.prog} --help)")


def add_option(p: argparse.ArgumentParser, name: str, s: Any) -> None:
    """One `crepe train` flag from its declaration (crepe.config)."""
    value = default(name)
    # a boolean's flag says what it changes: --no-dp turns DP off, --diagnostics turns them on
    shown = "" if value is None or s.kind == "bool" else f" (default: {value})"
    text = (s.help + shown).replace("%", "%%")  # argparse formats help with %
    if s.kind == "bool":
        dest_action = "store_false" if s.no_flag else "store_true"
        p.add_argument(s.flag, dest=name, action=dest_action, help=text)
        return
    def parse(text: str) -> Any:
        try:
            return s.parse(text)
        except UsageError as e:  # argparse reports ArgumentTypeError's own words
            raise argparse.ArgumentTypeError(str(e)) from None

    kw: dict[str, Any] = {"dest": name, "help": text, "type": parse}
    if s.choices:
        kw["metavar"] = "{" + ",".join(s.choices) + "}"
    p.add_argument(s.flag, **kw)
