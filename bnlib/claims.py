"""Every chapter's verdicts, recorded beside the build and collected on one page.

Each chapter ends with a table of the claims it judged. ``record_verdicts`` writes that table,
with the run profile and a digest of the chapter's source, to ``<verdict folder>/<chapter>.json``;
the closing page "The claims, judged" calls ``collect_verdicts``, which reads every chapter's rows
back and says, for each chapter, whether its rows are missing, were computed in another profile,
or are stale (the chapter's source changed since they were written). Nothing is shown silently.

The verdict folder is ``$BNLIB_VERDICTS_DIR`` if set, else ``_build/verdicts`` in the book
checkout found from the working directory upwards (a folder holding ``_toc.yml`` and ``book/``),
else none: a chapter run outside a checkout (Colab, a reader's copy) records nothing.

Example:
    >>> import tempfile, pandas as pd
    >>> folder = tempfile.mkdtemp()
    >>> table = pd.DataFrame([{"claim": "BN helps", "measured (95% CI)": "+1.0 pts [0.5, 1.5]",
    ...                        "verdict": "holds", "why": "CI above 0"}])
    >>> record_verdicts(table, chapter="03_lenet5_pytorch", source="Source 000", section="verdicts",
    ...                 folder=folder, book=None)
    >>> rows, notes = collect_verdicts(["03_lenet5_pytorch"], folder=folder, book=None, profile="smoke")
    >>> rows[0]["claim"], rows[0]["verdict"], notes
    ('BN helps', 'holds', [])
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bnlib._files import write_atomically

__all__ = ["record_verdicts", "collect_verdicts", "verdict_folder", "book_root", "chapter_digest"]

#: Format of the files; a file of another format is reported, not read.
FORMAT = 1
#: The fields of one recorded row.
FIELDS = ("source", "claim", "measured", "verdict", "detectable", "why", "section")
_MEASURED = ("measured", "difference")  # a chapter's measured column starts with one of these
_DETECTABLE = ("detectable", "smallest detectable")


def book_root(start: str | os.PathLike | None = None) -> Path | None:
    """The book checkout holding ``start`` (default: the working directory), or None outside one."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").is_file() and (folder / "book").is_dir():
            return folder
    return None


def verdict_folder(book: str | os.PathLike | None = None) -> Path | None:
    """Where verdict rows go: ``$BNLIB_VERDICTS_DIR``, else ``<book>/_build/verdicts``, else None."""
    if os.environ.get("BNLIB_VERDICTS_DIR"):
        return Path(os.environ["BNLIB_VERDICTS_DIR"]).resolve()
    root = Path(book) if book is not None else book_root()
    return None if root is None else root / "_build" / "verdicts"


def chapter_digest(chapter: str, book: str | os.PathLike | None) -> str | None:
    """sha256 of ``book/<chapter>.md`` in the checkout ``book``; None when there is no such file."""
    if book is None:
        return None
    path = Path(book) / "book" / f"{chapter}.md"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _root(book: Any) -> Path | None:
    """``book`` as a checkout: "find" searches from the working directory, None means none."""
    if isinstance(book, str) and book == "find":
        return book_root()
    return None if book is None else Path(book)


def _profile(profile: Any) -> Any:
    """A RunProfile as given, or the one ``bnlib.run_profile`` names (None: the environment's)."""
    from bnlib.config import run_profile

    return profile if hasattr(profile, "name") else run_profile(profile)


def _check_chapter(chapter: Any) -> str:
    if not isinstance(chapter, str) or not chapter or "/" in chapter or chapter.endswith((".md", ".ipynb")):
        raise ValueError(
            f"chapter must be a chapter's file name without folder or suffix, e.g. '03_lenet5_pytorch'; got {chapter!r}"
        )
    return chapter


def _records(table: Any) -> list[dict]:
    """The table's rows as dicts: a pandas DataFrame (its index dropped) or an iterable of dicts."""
    if hasattr(table, "to_dict") and hasattr(table, "columns"):
        frame = table.reset_index() if "claim" not in table.columns else table
        return [dict(row) for row in frame.to_dict(orient="records")]
    if isinstance(table, Iterable) and not isinstance(table, (str, bytes, dict)):
        rows = list(table)
        if all(isinstance(row, dict) for row in rows):
            return [dict(row) for row in rows]
    raise TypeError(f"table must be a pandas DataFrame or a list of dicts, one per claim; got {type(table).__name__}")


def _pick(row: dict, prefixes: Sequence[str]) -> Any:
    for key, value in row.items():
        if isinstance(key, str) and key.lower().startswith(prefixes):
            return value
    return None


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _normalize(row: dict, source: Any, section: str) -> dict:
    missing = [key for key in ("claim", "verdict") if key not in row]
    if missing:
        raise ValueError(
            f"every verdict row needs a 'claim' and a 'verdict' column; a row lacks {missing}: "
            f"its columns are {list(row)}"
        )
    if "source" in row and _text(row["source"]):
        who = _text(row["source"])
    elif callable(source):
        who = _text(source(_text(row["claim"])))
    else:
        who = _text(source)
    if not who:
        raise ValueError(
            f"no source for the claim {row['claim']!r}: give the table a 'source' column or pass "
            f"source='...' (a string, or a function of the claim)"
        )
    return {
        "source": who,
        "claim": _text(row["claim"]),
        "measured": _text(_pick(row, _MEASURED)) or "-",
        "verdict": _text(row["verdict"]),
        "detectable": _text(_pick(row, _DETECTABLE)) or "-",
        "why": _text(row.get("why")),
        "section": _text(row.get("section")) or section,
    }


def record_verdicts(
    table: Any,
    *,
    chapter: str,
    source: Any = None,
    section: str,
    folder: str | os.PathLike | None = None,
    book: Any = "find",
    profile: Any = None,
) -> None:
    """Write a chapter's verdict rows beside the build, for the page "The claims, judged".

    Args:
        table: the chapter's verdict table, a DataFrame or a list of dicts with at least ``claim``
            and ``verdict``; the measured column is the first whose name starts with "measured" or
            "difference", the detectable one the first starting with "detectable"; an optional
            ``source`` column names who makes each claim, an optional ``section`` its anchor.
        chapter: the chapter's file name without suffix, e.g. ``"03_lenet5_pytorch"``.
        source: who makes the claims, for rows without a ``source`` column: a string, or a
            function from the claim's text to a string.
        section: the anchor (label) of the chapter's section where the claims are judged.
        folder: where to write; default ``verdict_folder()``.
        book: the checkout whose ``book/<chapter>.md`` is digested; default: found from the
            working directory; None: record no digest.
        profile: the run profile the rows were computed in; default ``bnlib.run_profile()``.

    Writes ``<folder>/<chapter>.json``, or nothing when there is no verdict folder (a run outside a
    checkout). Returns None, so that a chapter cell ending with the call displays nothing.

    Raises:
        ValueError, TypeError: for a malformed table, chapter or source.
    """
    chapter = _check_chapter(chapter)
    if not isinstance(section, str) or not section:
        raise ValueError(
            f"section must be the anchor of the section judging the claims, e.g. 'verdicts'; got {section!r}"
        )
    rows = [_normalize(row, source, section) for row in _records(table)]
    root = _root(book)
    target = Path(folder) if folder is not None else verdict_folder(root)
    if target is None:
        return
    prof = _profile(profile)
    payload = {
        "format": FORMAT,
        "chapter": chapter,
        "profile": prof.name,
        "sizes": {
            "train_size": prof.train_size,
            "test_size": prof.test_size,
            "seeds": list(prof.seeds),
            "max_epochs": prof.max_epochs,
        },
        "digest": chapter_digest(chapter, root),
        "written": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "rows": rows,
    }
    text = json.dumps(payload, indent=1).encode()
    write_atomically(target / f"{chapter}.json", lambda file: file.write(text), prefix=f".{chapter}.")


def collect_verdicts(
    chapters: Sequence[str], *, folder: str | os.PathLike | None = None, book: Any = "find", profile: Any = None
) -> tuple[list[dict], list[str]]:
    """Every chapter's recorded rows, and a note for each chapter whose rows cannot be shown as current.

    Each returned row has the fields of ``FIELDS`` plus ``chapter``, ``profile`` and ``status``:
    ``"current"``, ``"other profile"`` (computed in another run profile than ``profile``) or
    ``"stale"`` (the chapter's source changed since). Rows that are not current are still returned,
    marked, and a note says why; a chapter with no file (or an unreadable one) gives a note and no rows.
    """
    wanted = _profile(profile).name
    root = _root(book)
    where = Path(folder) if folder is not None else verdict_folder(root)
    rows: list[dict] = []
    notes: list[str] = []
    for chapter in (_check_chapter(c) for c in chapters):
        path = None if where is None else where / f"{chapter}.json"
        if path is None or not path.is_file():
            notes.append(
                f"{chapter}: no verdict rows recorded in this build"
                + (
                    " (no verdict folder: set BNLIB_VERDICTS_DIR)"
                    if where is None
                    else f" ({path} does not exist: the chapter was not executed, or failed before its table)"
                )
            )
            continue
        try:
            payload = json.loads(path.read_text())
            if payload.get("format") != FORMAT or payload.get("chapter") != chapter:
                raise ValueError(f"format {payload.get('format')!r}, chapter {payload.get('chapter')!r}")
            recorded = [{key: _text(r.get(key)) for key in FIELDS} for r in payload["rows"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            notes.append(f"{chapter}: its verdict file {path} could not be read ({error}); no rows shown")
            continue
        status = "current"
        if payload.get("profile") != wanted:
            status = "other profile"
            notes.append(
                f"{chapter}: its rows were computed in the {payload.get('profile')!r} profile "
                f"({payload.get('written')}), not in this build's {wanted!r}"
            )
        else:
            now = chapter_digest(chapter, root)
            if now is not None and payload.get("digest") not in (None, now):
                status = "stale"
                notes.append(
                    f"{chapter}: its rows are stale: the chapter's source changed after they were "
                    f"written ({payload.get('written')})"
                )
        rows += [r | {"chapter": chapter, "profile": payload.get("profile"), "status": status} for r in recorded]
    return rows, notes
