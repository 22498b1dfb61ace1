"""Checks every command runs before its work starts: output paths, one clear line on failure.

A long run (the grill's evidence, a scaling sweep) must not end in a failed write, so each
output path is checked first: its folder exists, it is not a directory, it is not under a
regular file, and a file can actually be created there (a probe write; root passes
`os.access` almost everywhere). A failure prints `error: <option>: <why>` on stderr and
exits with status 2, as a usage error.
"""
from __future__ import annotations

import os

import typer
from rich.console import Console
from rich.markup import escape

from ..grill.safe_files import output_path_problem


def fail(message: str, code: int = 2) -> None:
    """Print one `error:` line on stderr and exit with `code`."""
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}",
                                               highlight=False)
    raise typer.Exit(code)


def check_output_paths(**paths: str | None) -> None:
    """Fail with one line unless every given path (option name -> path) can be written.

    Option names use underscores for dashes: `check_output_paths(json="a.json")`."""
    given = {f"--{k.replace('_', '-')}": p for k, p in paths.items() if p is not None}
    seen: dict[str, str] = {}
    for option, path in given.items():
        problem = output_path_problem(path, "output file")
        if problem:
            fail(f"{option}: {problem}")
        key = os.path.realpath(path)
        if key in seen:
            fail(f"{option} and {seen[key]} name the same file ({path})")
        seen[key] = option
