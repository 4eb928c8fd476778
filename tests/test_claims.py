"""bnlib.claims: chapters record their verdict rows; the claims page collects them and flags what is not current."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bnlib._files import write_atomically
from bnlib.claims import (
    FIELDS,
    book_root,
    chapter_digest,
    code_cells,
    collect_verdicts,
    record_verdicts,
    verdict_folder,
)

ROW = {
    "claim": "BN raises accuracy",
    "measured (95% CI)": "+1.00 pts [0.50, 1.50]",
    "verdict": "holds",
    "smallest detectable": "0.50 pts",
    "why": "CI above 0",
}


CHAPTER = "# LeNet-5\n\nSome prose.\n\n```{code-cell} ipython3\n:tags: [hide-input]\n\naccuracy = 0.98\n```\n"


@pytest.fixture
def book(tmp_path):
    """A minimal checkout: _toc.yml and book/<chapter>.md."""
    (tmp_path / "_toc.yml").write_text("format: jb-book\n")
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "03_lenet5_pytorch.md").write_text(CHAPTER)
    return tmp_path


def test_rows_round_trip_with_source_section_and_digest(book, tmp_path):
    folder = tmp_path / "verdicts"
    assert (
        record_verdicts(
            pd.DataFrame([ROW]),
            chapter="03_lenet5_pytorch",
            source="source 000",
            section="verdicts",
            folder=folder,
            book=book,
            profile="quick",
        )
        is None
    )
    payload = json.loads((folder / "03_lenet5_pytorch.json").read_text())
    assert payload["profile"] == "quick" and payload["sizes"]["train_size"] == 6_000
    assert payload["digest"] == chapter_digest("03_lenet5_pytorch", book)
    rows, notes = collect_verdicts(["03_lenet5_pytorch"], folder=folder, book=book, profile="quick")
    assert notes == []
    assert rows == [
        {
            "source": "source 000",
            "claim": "BN raises accuracy",
            "measured": "+1.00 pts [0.50, 1.50]",
            "verdict": "holds",
            "detectable": "0.50 pts",
            "why": "CI above 0",
            "section": "verdicts",
            "chapter": "03_lenet5_pytorch",
            "profile": "quick",
            "status": "current",
        }
    ]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_the_verdict_file_is_readable_as_the_umask_allows(tmp_path, umask):
    """Written through bnlib._files.write_atomically, as the MNIST cache is: not mkstemp's 0o600."""
    previous = os.umask(umask)
    try:
        record_verdicts(pd.DataFrame([ROW]), chapter="01_x", source="s", section="v", folder=tmp_path, book=None)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "01_x.json").stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["01_x.json"]  # no temporary file left


def test_a_write_that_fails_partway_keeps_the_previous_file(tmp_path):
    target = tmp_path / "01_x.json"
    target.write_bytes(b"the previous rows")

    def half_then_fail(file):
        file.write(b'{"format": 2, "rows": [')  # half a file is on disk when the write fails
        file.flush()
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, half_then_fail, prefix=".01_x.")
    assert target.read_bytes() == b"the previous rows"
    assert [p.name for p in tmp_path.iterdir()] == ["01_x.json"]  # the temporary file is gone


def test_a_source_column_or_function_names_who_makes_each_claim(tmp_path):
    rows = [ROW | {"claim": "MLP: BN helps"}, ROW | {"source": "Keras source A"}]
    record_verdicts(
        rows,
        chapter="03_x",
        section="s",
        folder=tmp_path,
        book=None,
        profile="smoke",
        source=lambda claim: "second source" if claim.startswith("MLP") else "source 000",
    )
    got, _ = collect_verdicts(["03_x"], folder=tmp_path, book=None, profile="smoke")
    assert [r["source"] for r in got] == ["second source", "Keras source A"]


def test_a_claim_as_the_index_is_read_too(tmp_path):
    frame = pd.DataFrame([ROW]).set_index("claim")
    record_verdicts(frame, chapter="02_x", source="s", section="s", folder=tmp_path, book=None, profile="smoke")
    assert collect_verdicts(["02_x"], folder=tmp_path, book=None, profile="smoke")[0][0]["claim"] == ROW["claim"]


def test_missing_rows_are_reported_not_skipped(tmp_path):
    rows, notes = collect_verdicts(["05_variants"], folder=tmp_path, book=None, profile="full")
    assert rows == [] and len(notes) == 1 and "05_variants: no verdict rows recorded" in notes[0]


def test_rows_of_another_profile_are_marked_and_noted(tmp_path):
    record_verdicts([ROW], chapter="03_x", source="s", section="s", folder=tmp_path, book=None, profile="quick")
    rows, notes = collect_verdicts(["03_x"], folder=tmp_path, book=None, profile="full")
    assert rows[0]["status"] == "other profile" and "'quick' profile" in notes[0] and "'full'" in notes[0]


def test_rows_of_a_chapter_changed_since_are_stale(book, tmp_path):
    record_verdicts(
        [ROW], chapter="03_lenet5_pytorch", source="s", section="s", folder=tmp_path, book=book, profile="smoke"
    )
    chapter = book / "book" / "03_lenet5_pytorch.md"
    chapter.write_text(CHAPTER.replace("accuracy = 0.98", "accuracy = 0.99"))
    rows, notes = collect_verdicts(["03_lenet5_pytorch"], folder=tmp_path, book=book, profile="smoke")
    assert rows[0]["status"] == "stale" and "stale" in notes[0]


def test_a_prose_or_option_edit_leaves_the_rows_current(book, tmp_path):
    """Only code computes rows; a cached build does not re-run a chapter whose prose changed."""
    record_verdicts(
        [ROW], chapter="03_lenet5_pytorch", source="s", section="s", folder=tmp_path, book=book, profile="smoke"
    )
    chapter = book / "book" / "03_lenet5_pytorch.md"
    chapter.write_text(CHAPTER.replace("Some prose.", "Other prose.").replace("[hide-input]", "[hide-output]"))
    rows, notes = collect_verdicts(["03_lenet5_pytorch"], folder=tmp_path, book=book, profile="smoke")
    assert rows[0]["status"] == "current" and notes == []


def test_code_cells_reads_what_jupytext_reads_for_every_chapter():
    jupytext = pytest.importorskip("jupytext")
    chapters = sorted((Path(__file__).resolve().parents[1] / "book").glob("0*.md"))
    assert chapters
    for path in chapters:
        expected = [cell.source for cell in jupytext.read(path).cells if cell.cell_type == "code"]
        assert code_cells(path.read_text()) == expected, path.name


def test_rows_of_a_profile_with_the_same_name_but_other_sizes_are_marked(tmp_path):
    record_verdicts([ROW], chapter="03_x", source="s", section="s", folder=tmp_path, book=None, profile="quick")
    path = tmp_path / "03_x.json"
    payload = json.loads(path.read_text())
    payload["sizes"]["train_size"] = 600
    path.write_text(json.dumps(payload))
    rows, notes = collect_verdicts(["03_x"], folder=tmp_path, book=None, profile="quick")
    assert rows[0]["status"] == "other profile" and "other sizes" in notes[0]


def test_a_file_of_an_unknown_format_is_reported_not_shown(tmp_path):
    record_verdicts([ROW], chapter="03_x", source="s", section="s", folder=tmp_path, book=None, profile="smoke")
    path = tmp_path / "03_x.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"format": 3}))
    rows, notes = collect_verdicts(["03_x"], folder=tmp_path, book=None, profile="smoke")
    assert rows == [] and "format 3" in notes[0]


def test_a_format_1_file_is_judged_by_its_whole_file_digest(book, tmp_path):
    """Format 1 digested the whole .md: current while the file is unchanged, stale after any edit."""
    chapter = book / "book" / "03_lenet5_pytorch.md"
    record_verdicts(
        [ROW], chapter="03_lenet5_pytorch", source="s", section="s", folder=tmp_path, book=book, profile="smoke"
    )
    path = tmp_path / "03_lenet5_pytorch.json"
    old = json.loads(path.read_text()) | {"format": 1, "digest": hashlib.sha256(chapter.read_bytes()).hexdigest()}
    path.write_text(json.dumps(old))
    rows, notes = collect_verdicts(["03_lenet5_pytorch"], folder=tmp_path, book=book, profile="smoke")
    assert rows[0]["status"] == "current" and notes == []
    chapter.write_text(CHAPTER.replace("Some prose.", "Other prose."))
    rows, notes = collect_verdicts(["03_lenet5_pytorch"], folder=tmp_path, book=book, profile="smoke")
    assert rows[0]["status"] == "stale" and "file changed" in notes[0]


@pytest.mark.parametrize("missing", [None, float("nan"), np.float32("nan"), pd.NA, pd.NaT])
def test_a_missing_cell_is_empty_text(tmp_path, missing):
    record_verdicts(
        [ROW | {"why": missing}], chapter="03_x", source="s", section="s", folder=tmp_path, book=None, profile="smoke"
    )
    assert collect_verdicts(["03_x"], folder=tmp_path, book=None, profile="smoke")[0][0]["why"] == ""


def test_a_file_with_an_unknown_verdict_is_reported_not_counted(tmp_path):
    record_verdicts([ROW], chapter="03_x", source="s", section="s", folder=tmp_path, book=None, profile="smoke")
    path = tmp_path / "03_x.json"
    payload = json.loads(path.read_text())
    payload["rows"][0]["verdict"] = "Holds"
    path.write_text(json.dumps(payload))
    rows, notes = collect_verdicts(["03_x"], folder=tmp_path, book=None, profile="smoke")
    assert rows == [] and "'Holds'" in notes[0]


def test_an_unreadable_file_is_reported(tmp_path):
    (tmp_path / "03_x.json").write_text("{not json")
    rows, notes = collect_verdicts(["03_x"], folder=tmp_path, book=None, profile="smoke")
    assert rows == [] and "could not be read" in notes[0]


def test_outside_a_checkout_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv("BNLIB_VERDICTS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert book_root() is None and verdict_folder() is None
    record_verdicts([ROW], chapter="03_x", source="s", section="s", profile="smoke")
    assert list(tmp_path.iterdir()) == []


def test_the_environment_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("BNLIB_VERDICTS_DIR", str(tmp_path / "v"))
    record_verdicts([ROW], chapter="03_x", source="s", section="s", book=None, profile="smoke")
    path = tmp_path / "v" / "03_x.json"
    assert verdict_folder() == tmp_path / "v" and set(json.loads(path.read_text())["rows"][0]) == set(FIELDS)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(table=[ROW], chapter="book/03_x.md"), ValueError, "without folder or suffix"),
        (dict(table=[ROW], chapter=""), ValueError, "without folder or suffix"),
        (dict(table=[{"claim": "c"}], chapter="03_x"), ValueError, "needs a 'claim' and a 'verdict'"),
        (dict(table="holds", chapter="03_x"), TypeError, "DataFrame or a list of dicts"),
        (dict(table=[ROW], chapter="03_x", source=None), ValueError, "no source for the claim"),
        (dict(table=[ROW], chapter="03_x", section=""), ValueError, "section must be the anchor"),
        (dict(table=[ROW], chapter=" 03_x "), ValueError, "without folder or suffix"),
        (dict(table=[], chapter="03_x"), ValueError, "has no rows"),
        (dict(table=pd.DataFrame(columns=["claim", "verdict"]), chapter="03_x"), ValueError, "has no rows"),
        (dict(table=[ROW, "holds"], chapter="03_x"), TypeError, "row 1 must be a dict"),
        (dict(table=[ROW | {"verdict": "Holds"}], chapter="03_x"), ValueError, "expected one of"),
        (dict(table=[ROW | {"verdict": float("nan")}], chapter="03_x"), ValueError, "expected one of"),
        (dict(table=[ROW | {"claim": float("nan")}], chapter="03_x"), ValueError, "empty claim"),
        (dict(table=[ROW], chapter="03_x", book=True), TypeError, "book must be a checkout's path"),
        (dict(table=[ROW], chapter="03_x", folder=3), TypeError, "folder must be a path"),
        (dict(table=[ROW], chapter="03_x", profile="huge"), ValueError, "huge"),
    ],
)
def test_bad_input_is_refused_clearly(tmp_path, kwargs, error, message):
    arguments = {"source": "s", "section": "s", "folder": tmp_path, "book": None, "profile": "smoke"} | kwargs
    with pytest.raises(error, match=message):
        record_verdicts(**arguments)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_profile_is_refused_even_where_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv("BNLIB_VERDICTS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="huge"):
        record_verdicts([ROW], chapter="03_x", source="s", section="s", profile="huge")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(chapters="03_x"), TypeError, "list of chapter names"),
        (dict(chapters=3), TypeError, "list of chapter names"),
        (dict(chapters=["03_x"], folder=3), TypeError, "folder must be a path"),
        (dict(chapters=["03_x"], book=True), TypeError, "book must be a checkout's path"),
    ],
)
def test_collect_refuses_bad_input_clearly(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        collect_verdicts(**({"folder": tmp_path, "book": None, "profile": "smoke"} | kwargs))
