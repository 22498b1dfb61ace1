"""`attnlab quiz` driven as a user drives it: through a pipe, and in a real terminal (tmux)."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

CMD = [sys.executable, "-c", "from attnlab.cli import main; main()", "quiz"]


def quiz(args: list[str], stdin: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg"), "COLUMNS": "100"}
    return subprocess.run(CMD + args, input=stdin, capture_output=True, text=True, env=env,
                          timeout=300, check=False)


def asked(out: str) -> list[int]:
    return [int(m) for m in re.findall(r"Question \d+/\d+ · Q(\d+) ·", out)]


def test_piped_sessions_grade_save_and_come_back_when_due(tmp_path):
    progress = tmp_path / "xdg" / "attnlab" / "progress.json"  # the default location
    opts = ["--tier", "1", "--include-pending", "--no-evidence"]
    first = quiz(opts + ["--seed", "5", "--limit", "3"], "kv per head\ny\n\nn\nskip me\ns\n",
                 tmp_path)
    base = opts + ["--progress", str(progress)]
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert "reading from stdin (not a terminal)" in out
    ids = asked(out)
    assert len(ids) == 3 and all(1 <= i <= 10 for i in ids)
    assert "Your answer (enter to reveal, q to quit): kv per head" in out
    assert "Score: 1/2 known (50%), 1 skipped." in out
    assert "Tier 1 (Q1–10" in out and "1/2 known — below the bar" in out
    assert "Weakest section:" in out

    doc = json.loads(progress.read_text())
    cards = doc["questions"]
    assert cards[str(ids[0])]["box"] == 2 and cards[str(ids[1])]["box"] == 1
    assert cards[str(ids[2])]["skipped"] == 1 and cards[str(ids[2])]["seen"] == 0
    assert doc["schema"] == "attnlab-quiz-progress" and len(doc["sessions"]) == 1

    due = quiz(base + ["--due"], "\ny\n", tmp_path)  # only the missed question is due
    assert due.returncode == 0, due.stderr
    assert asked(due.stdout) == [ids[1]] and "Score: 1/1 known" in due.stdout
    nothing = quiz(base + ["--due"], "", tmp_path)
    assert "Nothing is due: 2 practised question(s) are waiting" in nothing.stdout

    stats = quiz(["--stats", "--progress", str(progress)], "", tmp_path)
    assert stats.returncode == 0 and "mastery" in stats.stdout
    total = next(line for line in stats.stdout.splitlines() if line.strip().startswith("all"))
    assert total.split()[3:9] == ["2", "0", "0", "2", "0", "0"]  # practised, due, boxes 1..4


def test_corrupt_progress_stops_the_quiz_with_a_clear_message(tmp_path):
    progress = tmp_path / "progress.json"
    progress.write_text("{ half-written")
    res = quiz(["--progress", str(progress), "--no-evidence"], "\ny\n", tmp_path)
    assert res.returncode == 2
    assert "is not valid JSON" in res.stderr and "copy was saved" in res.stderr
    assert progress.read_text() == "{ half-written"
    assert [p.read_text() for p in tmp_path.glob("progress.json.bad-*")] == ["{ half-written"]


def test_bad_tier_is_rejected_naming_the_option():
    from typer.testing import CliRunner

    from attnlab.cli import _load_commands, app

    _load_commands()
    res = CliRunner().invoke(app, ["quiz", "--tier", "4"])
    assert res.exit_code == 2 and "tier (4) must be 1, 2 or 3" in res.output


# --- a real terminal -------------------------------------------------------------------------

GRADE_PROMPT = "s(kip) / q(uit): "  # ends both grade prompts (with and without a suggestion)


class Tmux:
    """A private tmux server (its own socket) holding one 100x50 terminal."""

    def __init__(self, tmp_path: Path) -> None:
        self.sock = f"attnlab-quiz-test-{os.getpid()}"
        self.tmp = tmp_path

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout

    def start(self, command: str) -> None:
        self.tmux("-f", "/dev/null", "new-session", "-d", "-s", "quiz", "-x", "100", "-y", "50",
                  command)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-S", "-500", "-t", "quiz")

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 120) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            text = self.screen()
            if text.count(pattern) >= count:
                return text
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} (x{count}) never appeared; screen:\n{self.screen()}")

    def type(self, text: str) -> None:
        if text:
            self.tmux("send-keys", "-t", "quiz", "-l", text)
        self.tmux("send-keys", "-t", "quiz", "Enter")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True,
                       check=False, timeout=30)


def test_quiz_in_a_real_terminal_under_tmux(tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux); the quiz could not be "
                    "tested in a real terminal on this machine")
    progress = tmp_path / "progress.json"
    args = " ".join(shlex.quote(a) for a in CMD + [
        "--tier", "1", "--include-pending", "--no-evidence", "--seed", "3", "-n", "2",
        "--progress", str(progress)])
    term = Tmux(tmp_path)
    env = f"XDG_DATA_HOME={shlex.quote(str(tmp_path / 'xdg'))}"
    term.start(f"env {env} {args}; echo QUIZ-EXIT-$?; sleep 120")  # run by tmux's shell
    try:
        screen = term.wait_for("Your answer (enter to reveal")
        assert "reading from the terminal" in screen
        term.type("queries share one KV head")
        term.wait_for(GRADE_PROMPT)  # "Grade: enter accepts …" where the rubric gave a hint
        term.type("n")
        term.wait_for("Your answer (enter to reveal", count=2)
        term.type("")
        term.wait_for(GRADE_PROMPT, count=2)
        term.type("y")
        screen = term.wait_for("QUIZ-EXIT-")
    finally:
        term.close()
    assert "QUIZ-EXIT-0" in screen, screen
    assert "queries share one KV head" in screen  # echoed by the terminal, not by the quiz
    assert "Score: 1/2 known (50%), 0 skipped." in screen
    ids = asked(screen)
    from attnlab.grill.registry import all_questions
    if next(q for q in all_questions() if q.id == ids[0]).rubric:  # typed: feedback shown
        assert "key points" in screen and "Suggested grade:" in screen
    cards = json.loads(progress.read_text())["questions"]
    assert len(ids) == 2 and cards[str(ids[0])]["box"] == 1 and cards[str(ids[1])]["box"] == 2


def test_ctrl_c_in_a_real_terminal_keeps_the_grades_given(tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux); Ctrl-C in a real terminal "
                    "could not be tested on this machine")
    progress = tmp_path / "progress.json"
    args = " ".join(shlex.quote(a) for a in CMD + [
        "--tier", "1", "--include-pending", "--no-evidence", "--seed", "3", "-n", "3",
        "--progress", str(progress)])
    term = Tmux(tmp_path)
    term.start(f"{args}; echo QUIZ-EXIT-$?; sleep 120")
    try:
        term.wait_for("Your answer (enter to reveal")
        term.type("")
        term.wait_for(GRADE_PROMPT)
        term.type("y")
        term.wait_for("Your answer (enter to reveal", count=2)
        term.tmux("send-keys", "-t", "quiz", "C-c")
        screen = term.wait_for("QUIZ-EXIT-")
    finally:
        term.close()
    assert "QUIZ-EXIT-130" in screen and "every grade given so far is saved" in screen, screen
    first = asked(screen)[0]
    cards = json.loads(progress.read_text())["questions"]
    assert list(cards) == [str(first)] and cards[str(first)]["box"] == 2
