"""Output paths are checked before any work starts, and fail with one clear line.

`grill --json/--html/--markdown` and `scaling --plot` must refuse a missing folder, a
directory, a path under a regular file and an unwritable folder before a single evidence
function or timing runs; `grill --section ''` is a usage error; `scaling --from N --to N`
says a fit needs two points. Work is replaced by a tripwire, so a check that came too late
fails the test instead of running the whole grill.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner
from unprivileged import run_unprivileged, world_reachable_dir

import attnlab.analysis.scaling as scaling_mod
from attnlab.cli import _load_commands, app
from attnlab.grill import runner

_load_commands()


class Tripwire(Exception):
    pass


@pytest.fixture
def no_work(monkeypatch):
    """Any evidence or scaling measurement raises: the command must fail before it."""
    def boom(*a, **k):
        raise Tripwire("work started before the output path was checked")
    monkeypatch.setattr(runner, "run_one", boom)
    monkeypatch.setattr(scaling_mod, "measure_scaling", boom)


def invoke(args: list[str]):
    return CliRunner().invoke(app, args)


def assert_one_line_error(res, *pieces: str) -> None:
    assert not isinstance(res.exception, Tripwire), "work ran before the path check"
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for piece in pieces:
        assert piece in lines[0], (piece, lines[0])


def bad_paths(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "a_file.txt").write_text("keep me")
    (tmp_path / "a_dir").mkdir()
    return {
        "missing folder": (tmp_path / "nope" / "out.x", "folder"),
        "directory": (tmp_path / "a_dir", "is a directory"),
        "under a regular file": (tmp_path / "a_file.txt" / "out.x", "is a file, not a directory"),
    }


@pytest.mark.parametrize("option", ["--json", "--html", "--markdown"])
@pytest.mark.parametrize("case", ["missing folder", "directory", "under a regular file"])
def test_grill_output_paths_are_checked_before_any_evidence(tmp_path, no_work, option, case):
    path, why = bad_paths(tmp_path)[case]
    res = invoke(["grill", "--question", "1", option, str(path)])
    assert_one_line_error(res, option, why, str(path))
    assert (tmp_path / "a_file.txt").read_text() == "keep me"


@pytest.mark.parametrize("case", ["missing folder", "directory", "under a regular file"])
def test_scaling_plot_path_is_checked_before_measuring(tmp_path, no_work, case):
    path, why = bad_paths(tmp_path)[case]
    res = invoke(["scaling", "--from", "256", "--to", "512", "--plot", str(path)])
    assert_one_line_error(res, "--plot", why)


@pytest.mark.parametrize("command", [
    ["grill", "--question", "1", "--html"],
    ["scaling", "--from", "256", "--to", "512", "--plot"],
])
def test_unwritable_output_folder_fails_before_work(tmp_path, no_work, command):
    base = world_reachable_dir()
    try:
        folder = base / "ro"
        folder.mkdir()
        os.chmod(folder, 0o555)
        target = folder / "out.file"

        def go():
            res = invoke(command + [str(target)])
            return [res.exit_code, res.stderr, isinstance(res.exception, Tripwire)]

        def warmup():  # imports what the command loads lazily, on a bad path: no work runs
            invoke(command + [str(tmp_path / "missing" / "x")])
        code, err, tripped = run_unprivileged(go, warmup)
        assert not tripped and code == 2, (code, err)
        assert err.count("\n") == 1 and "cannot be written" in err and str(folder) in err
        assert not target.exists()
    finally:
        os.chmod(base / "ro", 0o755)
        for p in sorted(base.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        base.rmdir()


def test_two_reports_on_one_file_are_refused(tmp_path, no_work):
    out = tmp_path / "r.out"
    res = invoke(["grill", "--question", "1", "--html", str(out), "--markdown", str(out)])
    assert_one_line_error(res, "name the same file")


def test_grill_empty_section_is_a_usage_error(no_work):
    res = invoke(["grill", "--section", ""])
    assert not isinstance(res.exception, Tripwire)
    assert res.exit_code == 2 and "section ('')" in res.output


def test_scaling_needs_two_points_to_fit(no_work):
    res = invoke(["scaling", "--from", "512", "--to", "512"])
    assert not isinstance(res.exception, Tripwire)
    assert res.exit_code == 2 and "two points" in res.output and "--to 1024" in res.output
    res = invoke(["scaling", "--from", "512", "--to", "1000"])  # 1024 is past --to
    assert res.exit_code == 2 and "two points" in res.output


def test_good_output_paths_still_write(tmp_path, monkeypatch):
    """A writable path passes the check, and the report is written after the evidence."""
    from attnlab.grill.registry import Evidence, Question

    def ev(ctx):
        e = Evidence()
        e.check("ok", True)
        return e
    qs = [Question(id=i, title=f"T{i}", answer="a" if i == 1 else "",
                   short="Said aloud." if i == 1 else "", evidence=ev if i == 1 else None)
          for i in range(1, 51)]
    monkeypatch.setattr(runner, "all_questions", lambda: qs)
    out = tmp_path / "r.json"
    res = invoke(["grill", "--question", "1", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert '"short": "Said aloud."' in out.read_text()
