"""Quiz progress: Leitner boxes kept in one JSON file per user, written atomically.

Leitner (1972) spaced repetition: every question sits in a box 1..5. A question the user
knew moves up one box and comes back after that box's interval; a missed question drops to
box 1 and is due again at the next session. Skips change nothing.

The file lives under the platform's user data directory (`default_path`) unless the caller
names one. Writes go to a temporary file in the same directory, are fsync'ed, then renamed
over the old file (`os.replace` is atomic on POSIX and Windows), so an interrupted session
leaves either the old or the new progress, never a torn file. A file that is not valid JSON,
or valid JSON written by something else, raises `ProgressError` after a byte-for-byte backup
is kept beside it; the original is never overwritten.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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

    def is_due(self, now: datetime) -> bool:
        return not self.due or datetime.fromisoformat(self.due) <= now


@dataclass
class Progress:
    """All cards plus a short session log; `path` is where `save` writes."""

    path: Path
    cards: dict[int, Card] = field(default_factory=dict)
    sessions: list[dict[str, Any]] = field(default_factory=list)

    def grade(self, qid: int, grade: str, now: datetime | None = None) -> Card:
        """Apply one self-grade: "y" moves up a box, "n" back to box 1, "s" only counts."""
        if grade not in ("y", "n", "s"):
            raise ValueError(f"grade ({grade!r}) must be 'y', 'n' or 's'")
        now = now or _now()
        card = self.cards.setdefault(qid, Card())
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

    def due_ids(self, ids: list[int], now: datetime | None = None) -> list[int]:
        """Ids already practised whose wait has run out (never-seen ids are not due)."""
        now = now or _now()
        return [i for i in ids if i in self.cards and self.cards[i].seen
                and self.cards[i].is_due(now)]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "questions": {str(k): vars(c) for k, c in sorted(self.cards.items())},
            "sessions": self.sessions[-200:],  # a bounded log: the cards hold the state
        }

    def save(self) -> None:
        atomic_write_json(self.path, self.to_json())


def atomic_write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write `doc` to `path` via temp file + fsync + os.replace; the old file survives errors."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if os.name == "posix":  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


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


def _parse_card(qid: str, raw: Any) -> tuple[int, Card]:
    if not isinstance(raw, dict):
        raise TypeError(f"entry for question {qid} is {type(raw).__name__}, expected an object")
    i = int(qid)
    if not 1 <= i <= 50:
        raise ValueError(f"question id {qid} is outside 1..50")
    known = {k: raw[k] for k in vars(Card()) if k in raw}
    card = Card(**known)
    if not isinstance(card.box, int) or not 1 <= card.box <= MAX_BOX:
        raise ValueError(f"question {qid} has box {card.box!r}, expected 1..{MAX_BOX}")
    for name in ("seen", "known", "missed", "skipped"):
        if not isinstance(getattr(card, name), int) or getattr(card, name) < 0:
            raise ValueError(f"question {qid} has {name}={getattr(card, name)!r}")
    if card.due:
        datetime.fromisoformat(card.due)  # raises ValueError on a bad time
    return i, card


def load(path: Path | str | None = None) -> Progress:
    """Read progress from `path` (default: `default_path()`); a missing file is empty progress.

    Raises ProgressError (after keeping a backup) when the file is unreadable as progress.
    """
    path = Path(path) if path is not None else default_path()
    if path.is_dir():
        raise ProgressError(f"progress path {path} is a directory; expected a JSON file path")
    if not path.exists():
        return Progress(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise _reject(path, "is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise _reject(path, f"is not valid JSON ({exc.msg} at line {exc.lineno}, "
                            f"column {exc.colno})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise _reject(path, f"is not an attnlab quiz progress file (no \"schema\": \"{SCHEMA}\")")
    version = doc.get("version")
    if not isinstance(version, int) or version > VERSION or version < 1:
        raise _reject(path, f"has version {version!r}; this attnlab reads version {VERSION}")
    try:
        cards = dict(_parse_card(k, v) for k, v in (doc.get("questions") or {}).items())
        sessions = doc.get("sessions") or []
        if not isinstance(sessions, list):
            raise TypeError("\"sessions\" is not a list")
    except (ValueError, TypeError, AttributeError) as exc:
        raise _reject(path, f"has a damaged entry: {exc}") from None
    return Progress(path, cards, sessions)
