"""Every chapter's verdicts, recorded beside the build and collected on one page.

Each chapter ends with a table of the claims it judged. ``record_verdicts`` writes that table,
with the run profile and a digest of the chapter's code, to ``<verdict folder>/<chapter>.json``;
the closing page "The claims, judged" calls ``collect_verdicts``, which reads every chapter's rows
back and says, for each chapter, whether its rows are missing, were computed in another profile
(another name or other sizes), or are stale (the chapter's code changed since they were written).
Nothing is shown silently.

The digest covers the chapter's code cells only, as jupyter-cache's does: an edit to the prose,
a caption or a cell's options changes no number, so it leaves the rows current (and a cached
build, which does not re-run such a chapter, does not leave them stale forever).

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
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bnlib._files import write_atomically
from bnlib.experiments import WORDS

__all__ = ["record_verdicts", "collect_verdicts", "verdict_folder", "book_root", "chapter_digest", "code_cells"]

#: Format of the files written. Format 1 (bnlib before code-cell digests) digested the whole ``.md``
#: file; such files are still read, and judged stale by that digest. Any other format is reported, not read.
FORMAT = 2
_READ = (1, FORMAT)
#: The verdicts a row may carry: the judging words, and the one for a claim about the full setting.
NOT_CHECKED = "not checked in this profile"
VERDICTS = (*WORDS, NOT_CHECKED)
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


_FENCE = re.compile(r"^(`{3,})\{code-cell\}")


def code_cells(text: str) -> list[str]:
    r"""The sources of the code cells of a MyST notebook (jupytext's ``md:myst``), options left out.

    A cell's options are either ``:key: value`` lines, ended by a blank line, or a YAML block
    between ``---`` lines; what follows, up to the closing fence, is the source.

    Example:
        >>> code_cells("text\n```{code-cell} ipython3\n:tags: [hide-input]\n\nx = 1\n```\nmore text\n")
        ['x = 1']
    """
    cells, lines, index = [], text.splitlines(), 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        index += 1
        if not opening:
            continue
        fence, body = opening.group(1), []
        while index < len(lines) and lines[index].rstrip() != fence:
            body.append(lines[index])
            index += 1
        index += 1  # the closing fence
        if body and body[0].strip() == "---":  # a YAML block of options
            end = next((i for i in range(1, len(body)) if body[i].strip() == "---"), 0)
            body = body[end + 1 :]
        elif body and body[0].startswith(":"):  # `:key: value` options, then a blank line
            end = next((i for i, line in enumerate(body) if not line.strip()), len(body))
            body = body[end + 1 :]
        cells.append("\n".join(body))
    return cells


def chapter_digest(chapter: str, book: str | os.PathLike | None) -> str | None:
    """sha256 of the code cells of ``book/<chapter>.md`` in the checkout ``book``; None without the file.

    Only the code counts (:func:`code_cells`): the rows a chapter records are computed by its code,
    so a change to its prose leaves them current.
    """
    path = _chapter_file(chapter, book)
    if path is None:
        return None
    joined = "\n\0\n".join(code_cells(path.read_text(encoding="utf-8")))
    return hashlib.sha256(joined.encode()).hexdigest()


def _chapter_file(chapter: str, book: str | os.PathLike | None) -> Path | None:
    """``book/<chapter>.md`` in the checkout ``book``, or None without a checkout or without the file."""
    path = None if book is None else Path(book) / "book" / f"{chapter}.md"
    return path if path is not None and path.is_file() else None


def _file_digest(chapter: str, book: Path | None) -> str | None:
    """sha256 of the whole ``book/<chapter>.md``: the digest of format-1 files."""
    path = _chapter_file(chapter, book)
    return None if path is None else hashlib.sha256(path.read_bytes()).hexdigest()


def _root(book: Any) -> Path | None:
    """``book`` as a checkout: "find" searches from the working directory, None means none."""
    if isinstance(book, str) and book == "find":
        return book_root()
    if book is not None and not isinstance(book, (str, os.PathLike)):
        raise TypeError(f"book must be a checkout's path, 'find' or None; got {type(book).__name__} {book!r}")
    return None if book is None else Path(book)


def _folder(folder: Any, root: Path | None) -> Path | None:
    """``folder`` as a path; None means the default, :func:`verdict_folder` of the checkout ``root``."""
    if folder is not None and not isinstance(folder, (str, os.PathLike)):
        raise TypeError(
            f"folder must be a path (str or os.PathLike) or None for the default; got {type(folder).__name__} {folder!r}"
        )
    return verdict_folder(root) if folder is None else Path(folder)


def _profile(profile: Any) -> Any:
    """A RunProfile as given, or the one ``bnlib.run_profile`` names (None: the environment's)."""
    from bnlib.config import run_profile

    return profile if hasattr(profile, "name") else run_profile(profile)


def _sizes(profile: Any) -> dict:
    """What a profile computes, as recorded: two profiles of one name but other sizes differ."""
    return {
        "train_size": profile.train_size,
        "test_size": profile.test_size,
        "seeds": list(profile.seeds),
        "max_epochs": profile.max_epochs,
    }


def _check_chapter(chapter: Any) -> str:
    bad = not isinstance(chapter, str) or not chapter or "/" in chapter or chapter.endswith((".md", ".ipynb"))
    if bad or any(character.isspace() for character in chapter):
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
        for number, row in enumerate(rows):
            if not isinstance(row, dict):
                raise TypeError(f"table row {number} must be a dict (one claim); got {type(row).__name__} {row!r}")
        return [dict(row) for row in rows]
    raise TypeError(f"table must be a pandas DataFrame or a list of dicts, one per claim; got {type(table).__name__}")


def _pick(row: dict, prefixes: Sequence[str]) -> Any:
    for key, value in row.items():
        if isinstance(key, str) and key.lower().startswith(prefixes):
            return value
    return None


def _text(value: Any) -> str:
    """A cell as text; a missing one (None, NaN of any float type, pd.NA, NaT) as ""."""
    if value is None:
        return ""
    try:
        missing = bool(value != value)  # noqa: PLR0124 (true for every NaN; pd.NA refuses bool())
    except TypeError:
        missing = True
    except ValueError:  # an array: not a missing value
        missing = False
    return "" if missing else str(value)


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
    if not _text(row["claim"]):
        raise ValueError(f"a verdict row has an empty claim: {row!r}; every row must say what was claimed")
    if _text(row["verdict"]) not in VERDICTS:
        raise ValueError(
            f"the claim {_text(row['claim'])!r} has the verdict {row['verdict']!r}; expected one of {list(VERDICTS)} "
            f"(compute it with bnlib.experiments.judge or claim_verdict)"
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
            "difference", the detectable one the first starting with "detectable" or "smallest
            detectable"; the verdict must be one of :data:`VERDICTS`; an optional
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

    The digest is taken when the rows are written, at the end of the chapter's run: a chapter whose
    code is edited while it runs gets the edited code's digest. Do not edit a chapter while it runs.

    Raises:
        ValueError, TypeError: for a malformed table (no rows, a row without a claim, a verdict that
            is not one of :data:`VERDICTS`), chapter, source, folder, book or profile.
    """
    chapter = _check_chapter(chapter)
    if not isinstance(section, str) or not section:
        raise ValueError(
            f"section must be the anchor of the section judging the claims, e.g. 'verdicts'; got {section!r}"
        )
    rows = [_normalize(row, source, section) for row in _records(table)]
    if not rows:
        raise ValueError(f"the verdict table of {chapter} has no rows: a chapter records the claims it judged")
    prof = _profile(profile)
    root = _root(book)
    target = _folder(folder, root)
    if target is None:
        return
    payload = {
        "format": FORMAT,
        "chapter": chapter,
        "profile": prof.name,
        "sizes": _sizes(prof),
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
    ``"current"``, ``"other profile"`` (computed in another run profile than ``profile``: another
    name, or the same name with other sizes) or ``"stale"`` (the chapter's code changed since).
    Rows that are not current are still returned, marked, and a note says why; a chapter with no
    file (or an unreadable one) gives a note and no rows.
    """
    if isinstance(chapters, (str, bytes)) or not isinstance(chapters, Iterable):
        raise TypeError(
            f"chapters must be a list of chapter names, e.g. ['03_lenet5_pytorch']; got {type(chapters).__name__} "
            f"{chapters!r}"
        )
    prof = _profile(profile)
    wanted, sizes = prof.name, _sizes(prof)
    root = _root(book)
    where = _folder(folder, root)
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
            if payload.get("format") not in _READ or payload.get("chapter") != chapter:
                raise ValueError(
                    f"format {payload.get('format')!r} for chapter {payload.get('chapter')!r}; this bnlib reads "
                    f"formats {list(_READ)} for chapter {chapter!r}: re-run the chapter"
                )
            recorded = [{key: _text(r.get(key)) for key in FIELDS} for r in payload["rows"]]
            unknown = sorted({r["verdict"] for r in recorded} - set(VERDICTS))
            if unknown:
                raise ValueError(f"verdicts {unknown} are not among {list(VERDICTS)}")
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
        elif payload.get("sizes") != sizes:
            status = "other profile"
            notes.append(
                f"{chapter}: its rows were computed in a {wanted!r} profile of other sizes "
                f"({payload.get('sizes')}, written {payload.get('written')}), not this build's {sizes}"
            )
        else:
            legacy = payload.get("format") == 1  # its digest covers the whole file, prose included
            now = _file_digest(chapter, root) if legacy else chapter_digest(chapter, root)
            if now is not None and payload.get("digest") not in (None, now):
                status = "stale"
                notes.append(
                    f"{chapter}: its rows are stale: the chapter's {'file' if legacy else 'code'} changed after "
                    f"they were written ({payload.get('written')})"
                )
        rows += [r | {"chapter": chapter, "profile": payload.get("profile"), "status": status} for r in recorded]
    return rows, notes
