"""The `attnlab` command line.

Each module in this package registers its commands on `app` when imported; new commands
need one new module here and nothing else (modules are discovered automatically).
"""
from __future__ import annotations

import importlib
import pkgutil

import typer

app = typer.Typer(
    name="attnlab",
    help="attnlab: attention variants, verified against exact references and measured.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """attnlab: attention variants, verified against exact references and measured."""


def _load_commands() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def main() -> None:
    _load_commands()
    app()
