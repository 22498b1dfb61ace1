"""Quiz progress is never lost: concurrent sessions merge, bad locations stop the quiz before
the first question, odd files take the corrupt-file path, killed saves leave no temp files,
and the file keeps its mode.

Tests run as root here, which passes most permission checks; the permission cases therefore
use failures root cannot bypass (a path under a regular file, a FIFO, a directory) and, for
real permission bits, run the quiz as the unprivileged `nobody` user when the test is root.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner
from unprivileged import run_unprivileged, world_reachable_dir

from attnlab.cli import _load_commands, app
from attnlab.grill import progress as prog
from attnlab.grill.safe_files import file_lock

_load_commands()

CMD = [sys.executable, "-c", "from attnlab.cli import main; main()", "quiz"]
NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "XDG_DATA_HOME": str(tmp / "xdg"), "COLUMNS": "100",
            "PYTHONUNBUFFERED": "1"}


def quiz(args: list[str], stdin: str, tmp: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(CMD + args, input=stdin, capture_output=True, text=True,
                          env=_env(tmp), timeout=120, check=False, **kw)


def quiz_here(args: list[str], stdin: str = "\ny\n") -> subprocess.CompletedProcess:
    """The quiz command run in this process (no interpreter start-up), as a CompletedProcess."""
    r = CliRunner().invoke(app, ["quiz", *args], input=stdin)
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


def _doc(path: Path) -> dict:
    return json.loads(path.read_text())


# --- two sessions on one file -----------------------------------------------------------------

def test_two_sessions_loaded_together_both_keep_grades_and_logs(tmp_path):
    path = tmp_path / "p.json"
    prog.Progress(path).save()
    a, b = prog.load(path), prog.load(path)  # both started before either saved
    a.grade(3, "y", NOW)
    a.record_feedback(3, ["one KV head"])
    a.save()
    b.grade(7, "n", NOW)
    b.grade(3, "y", NOW)
    b.save()
    a.log_session({"who": "a"})
    a.save()
    b.log_session({"who": "b"})
    b.save()
    final = prog.load(path)
    assert final.cards[3].known == 2 and final.cards[3].box == 3  # both "y"s counted
    assert final.cards[7].missed == 1 and final.cards[3].missed_points == {"one KV head": 1}
    assert [s["who"] for s in final.sessions] == ["a", "b"]
    assert b.cards[3].known == 2  # a save adopts what the other process wrote


def test_save_waits_for_the_lock_then_merges(tmp_path):
    path = tmp_path / "p.json"
    p = prog.Progress(path)
    p.grade(1, "y", NOW)
    p.save()
    other = prog.load(path)
    other.grade(2, "y", NOW)
    done = threading.Event()
    with file_lock(path):
        t = threading.Thread(target=lambda: (other.save(), done.set()))
        t.start()
        time.sleep(0.3)
        assert not done.is_set() and 2 not in prog._read(path).cards  # blocked on the lock
        p.grade(5, "n", NOW)  # meanwhile this process records a grade in memory
    t.join(10)
    assert done.is_set()
    p.save()
    assert set(prog.load(path).cards) == {1, 2, 5}


def test_two_quiz_processes_on_one_file_keep_both_grades_and_session_logs(tmp_path):
    path = tmp_path / "shared.json"
    common = ["--progress", str(path), "--no-evidence", "--limit", "1", "--seed", "1"]
    a = subprocess.Popen(CMD + common + ["--section", "A"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env(tmp_path))
    try:
        seen = ""
        while "Question 1/1" not in seen:  # A has loaded the (empty) progress
            line = a.stdout.readline()
            assert line, f"quiz A ended early: {seen}{a.stderr.read()}"
            seen += line
        b = quiz(common + ["--section", "B"], "\nn\n", tmp_path)  # B runs start to finish
        assert b.returncode == 0, b.stderr
        out, err = a.communicate("\ny\n", timeout=120)
        assert "Score: 1/1 known" in out, out
    finally:
        if a.poll() is None:
            a.kill()
    assert a.returncode == 0, err
    doc = _doc(path)
    grades = {int(k): v["last_grade"] for k, v in doc["questions"].items()}
    assert sorted(grades.values()) == ["n", "y"]
    assert {1 <= q <= 8 for q in grades} == {True, False}  # one from A, one from B
    assert len(doc["sessions"]) == 2


# --- locations checked before the first question ---------------------------------------------

def _assert_stopped_before_asking(res: subprocess.CompletedProcess, *pieces: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Question 1/" not in res.stdout and "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    for piece in pieces:
        assert piece in lines[0], (piece, lines[0])


def test_progress_under_a_regular_file_stops_before_the_first_question(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    res = quiz_here(["--progress", str(tmp_path / "notes.txt" / "p.json"), "--no-evidence"])
    _assert_stopped_before_asking(res, "is a file, not a directory")
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.timeout(60)  # reading a FIFO blocks: a quiz that tried would hang
@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_progress_path_that_is_not_a_file_stops_the_quiz(tmp_path, kind):
    target = tmp_path / "p.json"
    if kind == "directory":
        target.mkdir()
    else:
        os.mkfifo(target)  # reading it would block forever
    res = quiz_here(["--progress", str(target), "--no-evidence"])
    _assert_stopped_before_asking(res, "is a directory" if kind == "directory"
                                  else "is not a regular file")


def _quiz_unprivileged(args: list[str], warm_path: Path) -> subprocess.CompletedProcess:
    def go():
        r = quiz_here(args)
        return [r.returncode, r.stdout, r.stderr]

    def warmup():  # the same command on a good path imports everything the quiz needs
        quiz_here(["--progress", str(warm_path), "--no-evidence"], stdin="q\n")
    rc, out, err = run_unprivileged(go, warmup)
    return subprocess.CompletedProcess(args, rc, out, err)


@pytest.mark.parametrize("case", ["unreadable file", "unwritable folder"])
def test_permission_denied_stops_the_quiz_with_one_line(tmp_path, case):
    base = world_reachable_dir()
    try:
        folder = base / "data"
        folder.mkdir()
        path = folder / "p.json"
        p = prog.Progress(path)
        p.grade(2, "y", NOW)
        p.save()
        before = path.read_bytes()
        if case == "unreadable file":
            os.chmod(folder, 0o777)
            os.chmod(path, 0o000)
        else:
            os.chmod(path, 0o644)
            os.chmod(folder, 0o555)
        res = _quiz_unprivileged(["--progress", str(path), "--no-evidence"],
                                 tmp_path / "warm.json")
        _assert_stopped_before_asking(res, "cannot be read" if case == "unreadable file"
                                      else "cannot be written")
        assert path.read_bytes() == before
    finally:
        os.chmod(base / "data", 0o755)
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_default_location_folders_are_created_but_a_named_path_needs_its_folder(
        tmp_path, monkeypatch):
    monkeypatch.setattr(prog, "default_path", lambda: tmp_path / "xdg" / "attnlab" / "p.json")
    assert prog.check_location() == tmp_path / "xdg" / "attnlab" / "p.json"
    res = quiz_here(["--progress", str(tmp_path / "typo" / "p.json"), "--no-evidence"])
    _assert_stopped_before_asking(res, "folder", "does not exist")
    assert not (tmp_path / "typo").exists()
    (tmp_path / "f").write_text("")
    with pytest.raises(prog.ProgressError, match="is a file, not a directory"):
        prog.check_location(tmp_path / "f" / "deeper" / "p.json")


# --- files that take the corrupt-file path ----------------------------------------------------

HEADER = '{"schema": "attnlab-quiz-progress", "version": 1, '


@pytest.mark.parametrize("content, why", [
    (HEADER + '"questions": {"3": {"box": 2, "seen": 1, "due": "2026-01-01T00:00:00"}}}',
     "without a time zone"),
    (HEADER + '"questions": {"3": {"box": 2}, "03": {"box": 4}}}', "appears twice"),
    (HEADER + '"questions": {"3": {"box": 2}, "3": {"box": 4}}}', "appears twice"),
    (HEADER + '"sessions": [' + "[" * 100_000 + "]" * 100_000 + "]}", "nested"),
    (HEADER + '"sessions": [' + "[" * 40 + "]" * 40 + "]}", "nested more than"),
    (HEADER + '"questions": {"3": {"box": true}}}', "damaged entry"),
])
def test_odd_files_are_backed_up_and_reported(tmp_path, content, why):
    path = tmp_path / "progress.json"
    path.write_text(content)
    with pytest.raises(prog.ProgressError) as err:
        prog.load(path)
    msg = str(err.value)
    assert why in msg and "untouched" in msg, msg
    backups = list(tmp_path.glob("progress.json.bad-*"))
    assert len(backups) == 1 and backups[0].read_text() == content
    assert path.read_text() == content


def test_naive_due_date_stops_the_quiz_cleanly(tmp_path):
    path = tmp_path / "progress.json"
    path.write_text(HEADER + '"questions": {"3": {"box": 2, "seen": 1, '
                    '"due": "2026-01-01T00:00:00"}}}')
    res = quiz_here(["--progress", str(path), "--no-evidence", "--due"])
    assert res.returncode == 2 and "without a time zone" in res.stderr
    assert "Traceback" not in res.stderr


# --- killed saves and file modes --------------------------------------------------------------

def test_temp_files_of_a_killed_save_are_removed_on_the_next_start(tmp_path):
    path = tmp_path / "progress.json"
    p = prog.Progress(path)
    p.grade(1, "y", NOW)
    p.save()
    stale = [tmp_path / ".progress.json.k1ll3d.tmp", tmp_path / ".progress.json.x9.tmp"]
    for s in stale:
        s.write_text('{"half": ')
    (tmp_path / "keep.tmp").write_text("not ours")
    assert prog.load(path).cards[1].box == 2
    assert not any(s.exists() for s in stale) and (tmp_path / "keep.tmp").exists()


def test_save_keeps_the_files_mode(tmp_path):
    path = tmp_path / "progress.json"
    p = prog.Progress(path)
    p.grade(1, "y", NOW)
    p.save()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as `open` would create it
    os.chmod(path, 0o640)
    p.grade(2, "n", NOW)
    p.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    os.chmod(path, 0o604)
    q = prog.load(path)
    q.grade(3, "y", NOW)
    q.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o604
