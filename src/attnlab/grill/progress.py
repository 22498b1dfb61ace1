"""Quiz progress: Leitner boxes kept in one JSON file per user, never lost.

Leitner (1972) spaced repetition: every question sits in a box 1..5. A question the user
knew moves up one box and comes back after that box's interval; a missed question drops to
box 1 and is due again at the next session. Skips change nothing.

The file lives under the platform's user data directory (`default_path`) unless the caller
names one. Safety (helpers in `safe_files`):

- Before the first question the CLI calls `check_location`: a folder that cannot be created
  or written, a file that cannot be read, a directory or a non-regular file at the path stop
  the quiz with one line, before any grade could be lost.
- `save` takes a file lock, re-reads the file and replays this process's grades and session
  entries onto what it finds, so two quiz processes on one file both keep their grades and
  logs. Writes go through a temp file + fsync + rename (never a torn file) and keep the
  file's mode; temp files of a killed save are removed on the next `load`.
- A file that is not valid JSON, is nested absurdly deep, repeats a question id ("3" and
  "03"), carries a time without a time zone, or is otherwise not ours raises `ProgressError`
  after a byte-for-byte backup is kept beside it; the original is never overwritten.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .safe_files import (
    atomic_write_text,
    creatable_path_problem,
    file_lock,
    remove_stale_temps,
)

SCHEMA = "attnlab-quiz-progress"
VERSION = 1
MAX_BOX = 5
# Days until a question in box b is due again. Box 1 (missed) is due at once: the next
# session asks it again; each correct answer roughly doubles the wait after that.
INTERVAL_DAYS: dict[int, float] = {1: 0.0, 2: 1.0, 3: 3.0, 4: 7.0, 5: 16.0}


class ProgressError(Exception):
    """The progress file cannot be used as it is; the message says why and what to do."""


def default_path() -> Path:
    """`progress.json` in the per-user data directory of this platform.

    Linux/BSD: `$XDG_DATA_HOME/attnlab` (default `~/.local/share/attnlab`);
    macOS: `~/Library/Application Support/attnlab`; Windows: `%LOCALAPPDATA%\\attnlab`.
    """
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        xdg = os.environ.get("XDG_DATA_HOME", "")
        base = Path(xdg) if os.path.isabs(xdg) else home / ".local" / "share"
    return base / "attnlab" / "progress.json"


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds")


@dataclass
class Card:
    """One question's place in the Leitner system."""

    box: int = 1
    due: str = ""  # ISO-8601 UTC time the question is due again
    seen: int = 0
    known: int = 0
    missed: int = 0
    skipped: int = 0
    last: str = ""  # ISO time of the last grade
    last_grade: str = ""  # "y" | "n" | "s"
    typed: int = 0  # typed answers checked against the question's rubric
    missed_points: dict[str, int] = field(default_factory=dict)  # rubric key point -> misses

    def is_due(self, now: datetime) -> bool:
        return not self.due or datetime.fromisoformat(self.due) <= now


def _apply_grade(cards: dict[int, Card], qid: int, grade: str, now: datetime) -> Card:
    card = cards.setdefault(qid, Card())
    if grade == "s":
        card.skipped += 1
        return card
    card.seen += 1
    if grade == "y":
        card.known += 1
        card.box = min(card.box + 1, MAX_BOX)
    else:
        card.missed += 1
        card.box = 1
    card.due = _iso(now + timedelta(days=INTERVAL_DAYS[card.box]))
    card.last = _iso(now)
    card.last_grade = grade
    return card


def _apply_feedback(cards: dict[int, Card], qid: int, missed: list[str]) -> Card:
    card = cards.setdefault(qid, Card())
    card.typed += 1
    for name in missed:
        card.missed_points[name] = card.missed_points.get(name, 0) + 1
    return card


@dataclass
class Progress:
    """All cards plus a short session log; `path` is where `save` writes.

    Changes made through `grade`, `record_feedback` and `log_session` (or appended to
    `sessions`) since the last load/save are replayed onto the file's current content at
    `save`, so concurrent sessions merge instead of overwriting each other.
    """

    path: Path
    cards: dict[int, Card] = field(default_factory=dict)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    _ops: list[tuple] = field(default_factory=list, repr=False, compare=False)
    _base_sessions: int = field(default=0, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._base_sessions = len(self.sessions)

    def grade(self, qid: int, grade: str, now: datetime | None = None) -> Card:
        """Apply one self-grade: "y" moves up a box, "n" back to box 1, "s" only counts."""
        if grade not in ("y", "n", "s"):
            raise ValueError(f"grade ({grade!r}) must be 'y', 'n' or 's'")
        now = now or _now()
        self._ops.append(("grade", qid, grade, now))
        return _apply_grade(self.cards, qid, grade, now)

    def record_feedback(self, qid: int, missed: list[str]) -> Card:
        """Count one typed answer to `qid` and the rubric key points it missed."""
        self._ops.append(("feedback", qid, list(missed)))
        return _apply_feedback(self.cards, qid, missed)

    def log_session(self, entry: dict[str, Any]) -> None:
        self.sessions.append(entry)

    def due_ids(self, ids: list[int], now: datetime | None = None) -> list[int]:
        """Ids already practised whose wait has run out (never-seen ids are not due)."""
        now = now or _now()
        return [i for i in ids if i in self.cards and self.cards[i].seen
                and self.cards[i].is_due(now)]

    def missed_points_ranking(self) -> list[tuple[int, str, int, int]]:
        """(question id, key point, times missed, typed answers), most often missed first."""
        rows = [(qid, name, n, c.typed) for qid, c in self.cards.items()
                for name, n in c.missed_points.items() if n > 0]
        return sorted(rows, key=lambda r: (-r[2], -(r[2] / max(r[3], 1)), r[0], r[1]))

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "questions": {str(k): vars(c) for k, c in sorted(self.cards.items())},
            "sessions": self.sessions[-200:],  # a bounded log: the cards hold the state
        }

    def save(self) -> None:
        """Lock, re-read the file, replay this process's changes onto it, write atomically.

        A file that became unreadable as progress since it was loaded is backed up, and
        this process's full state is written in its place."""
        with file_lock(self.path):
            try:
                disk = _read(self.path)
            except ProgressError:
                disk = None  # _read kept a backup; write what this process holds
            if disk is not None:
                for op in self._ops:
                    if op[0] == "grade":
                        _apply_grade(disk.cards, *op[1:])
                    else:
                        _apply_feedback(disk.cards, *op[1:])
                disk.sessions.extend(self.sessions[self._base_sessions:])
                self.cards, self.sessions = disk.cards, disk.sessions[-200:]
            else:
                self.sessions = self.sessions[-200:]
            atomic_write_json(self.path, self.to_json())
            self._ops.clear()
            self._base_sessions = len(self.sessions)


def atomic_write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write `doc` to `path` via temp file + fsync + os.replace; the old file survives errors
    and keeps its mode."""
    atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=False) + "\n")


def check_location(path: Path | str | None = None) -> Path:
    """Raise ProgressError (one line) unless progress can be read from and saved to `path`.

    Called before the first question, so no grade is given that could not be kept. The
    default location's folders are created as needed; a path the user named must be in a
    folder that exists (a typo should not silently start a new progress file elsewhere)."""
    named = path is not None
    path = Path(path) if named else default_path()
    problem = creatable_path_problem(path, "progress file")
    if problem is None and named and not path.parent.is_dir():
        problem = f"progress file {path} cannot be created: folder {path.parent} does not exist"
    if problem:
        raise ProgressError(f"{problem}. Pass --progress PATH to use another file.")
    return path


def _backup(path: Path) -> Path:
    """Copy `path` to `<name>.bad-<UTC time>` beside it (reusing an identical earlier copy)."""
    data = path.read_bytes()
    for old in sorted(path.parent.glob(f"{path.name}.bad-*")):
        try:
            if old.read_bytes() == data:
                return old
        except OSError:
            continue
    stamp = _now().strftime("%Y%m%dT%H%M%SZ")
    dest = path.with_name(f"{path.name}.bad-{stamp}")
    n = 1
    while dest.exists():
        dest = path.with_name(f"{path.name}.bad-{stamp}-{n}")
        n += 1
    shutil.copy2(path, dest)
    return dest


def _reject(path: Path, why: str) -> ProgressError:
    backup = _backup(path)
    return ProgressError(
        f"progress file {path} {why}. It was left untouched and a copy was saved to {backup}. "
        f"Move or delete {path} to start fresh, or pass --progress PATH to use another file."
    )


MAX_DEPTH = 8  # our files nest 4 levels; anything far deeper was not written by us


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice in one object")
        out[k] = v
    return out


def _depth(x: Any) -> int:
    """Nesting depth of a parsed JSON value, computed without recursion."""
    deepest, stack = 0, [(x, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(v, dict):
            stack += [(w, d + 1) for w in v.values()]
        elif isinstance(v, list):
            stack += [(w, d + 1) for w in v]
    return deepest


def _is_count(v: Any) -> bool:
    return type(v) is int and v >= 0


def _check_time(qid: str, name: str, value: Any) -> None:
    if value == "":
        return
    if not isinstance(value, str):
        raise TypeError(f"question {qid} has {name}={value!r}, expected an ISO time string")
    t = datetime.fromisoformat(value)  # raises ValueError on a bad time
    if t.tzinfo is None:
        raise ValueError(f"question {qid} has {name}={value!r} without a time zone")


def _parse_card(qid: str, raw: Any) -> tuple[int, Card]:
    if not isinstance(raw, dict):
        raise TypeError(f"entry for question {qid} is {type(raw).__name__}, expected an object")
    if not (qid.isascii() and qid.isdigit()):
        raise ValueError(f"question id {qid!r} is not a number")
    i = int(qid)
    if not 1 <= i <= 50:
        raise ValueError(f"question id {qid} is outside 1..50")
    known = {k: raw[k] for k in vars(Card()) if k in raw}
    card = Card(**known)
    if type(card.box) is not int or not 1 <= card.box <= MAX_BOX:
        raise ValueError(f"question {qid} has box {card.box!r}, expected 1..{MAX_BOX}")
    for name in ("seen", "known", "missed", "skipped", "typed"):
        if not _is_count(getattr(card, name)):
            raise ValueError(f"question {qid} has {name}={getattr(card, name)!r}")
    _check_time(qid, "due", card.due)
    _check_time(qid, "last", card.last)
    if card.last_grade not in ("", "y", "n", "s"):
        raise ValueError(f"question {qid} has last_grade={card.last_grade!r}")
    mp = card.missed_points
    if not isinstance(mp, dict) or not all(isinstance(k, str) and _is_count(v)
                                           for k, v in mp.items()):
        raise ValueError(f"question {qid} has missed_points={mp!r}, expected name -> count")
    return i, card


def _read(path: Path) -> Progress | None:
    """The progress in `path`, or None when there is no file; ProgressError if unusable."""
    if not os.path.lexists(path):
        return None
    if path.is_dir():
        raise ProgressError(f"progress path {path} is a directory; expected a JSON file path")
    if not path.is_file():
        raise ProgressError(f"progress path {path} is not a regular file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ProgressError(f"progress file {path} cannot be read: "
                            f"{exc.strerror or exc}") from None
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError:
        raise _reject(path, "is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise _reject(path, f"is not valid JSON ({exc.msg} at line {exc.lineno}, "
                            f"column {exc.colno})") from None
    except RecursionError:
        raise _reject(path, "is nested too deeply to be a progress file") from None
    except ValueError as exc:  # a duplicate key
        raise _reject(path, f"has a damaged entry: {exc}") from None
    if _depth(doc) > MAX_DEPTH:
        raise _reject(path, f"is nested more than {MAX_DEPTH} levels deep, which no progress "
                            "file is")
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise _reject(path, f"is not an attnlab quiz progress file (no \"schema\": \"{SCHEMA}\")")
    version = doc.get("version")
    if type(version) is not int or version > VERSION or version < 1:
        raise _reject(path, f"has version {version!r}; this attnlab reads version {VERSION}")
    try:
        questions = doc.get("questions") or {}
        if not isinstance(questions, dict):
            raise TypeError("\"questions\" is not an object")
        cards: dict[int, Card] = {}
        for k, v in questions.items():
            i, card = _parse_card(k, v)
            if i in cards:
                raise ValueError(f"question {i} appears twice (ids {k!r} and another)")
            cards[i] = card
        sessions = doc.get("sessions") or []
        if not isinstance(sessions, list) or not all(isinstance(x, dict) for x in sessions):
            raise TypeError("\"sessions\" is not a list of objects")
    except (ValueError, TypeError, AttributeError) as exc:
        raise _reject(path, f"has a damaged entry: {exc}") from None
    return Progress(path, cards, sessions)


def load(path: Path | str | None = None) -> Progress:
    """Read progress from `path` (default: `default_path()`); a missing file is empty progress.

    Removes temp files a killed save left beside it. Raises ProgressError (after keeping a
    backup) when the file is unreadable as progress.
    """
    path = Path(path) if path is not None else default_path()
    with contextlib.ExitStack() as stack:
        if path.parent.is_dir() and os.access(path.parent, os.W_OK):
            try:
                stack.enter_context(file_lock(path))
                remove_stale_temps(path)  # safe under the lock: no save is in flight
            except OSError:  # a read-only place (`--stats` on a read-only mount): read as is
                pass
            except TimeoutError as exc:
                raise ProgressError(f"progress file {path} cannot be used: {exc}") from None
        found = _read(path)
    return found if found is not None else Progress(path)
