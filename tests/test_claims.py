"""bnlib.claims: chapters record their verdict rows; the claims page collects them and flags what is not current."""

from __future__ import annotations

import json
import os
import stat

import pandas as pd
import pytest

from bnlib.claims import FIELDS, book_root, chapter_digest, collect_verdicts, record_verdicts, verdict_folder

ROW = {
    "claim": "BN raises accuracy",
    "measured (95% CI)": "+1.00 pts [0.50, 1.50]",
    "verdict": "holds",
    "smallest detectable": "0.50 pts",
    "why": "CI above 0",
}


@pytest.fixture
def book(tmp_path):
    """A minimal checkout: _toc.yml and book/<chapter>.md."""
    (tmp_path / "_toc.yml").write_text("format: jb-book\n")
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "03_lenet5_pytorch.md").write_text("# LeNet-5\n")
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


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    record_verdicts(pd.DataFrame([ROW]), chapter="01_x", source="s", section="v", folder=tmp_path, book=None)
    before = (tmp_path / "01_x.json").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("bnlib.claims.json.dumps", broken)
    with pytest.raises(OSError, match="disk full"):
        record_verdicts(pd.DataFrame([ROW]), chapter="01_x", source="s", section="v", folder=tmp_path, book=None)
    assert (tmp_path / "01_x.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["01_x.json"]


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
    (book / "book" / "03_lenet5_pytorch.md").write_text("# LeNet-5, edited\n")
    rows, notes = collect_verdicts(["03_lenet5_pytorch"], folder=tmp_path, book=book, profile="smoke")
    assert rows[0]["status"] == "stale" and "stale" in notes[0]


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
    ],
)
def test_bad_input_is_refused_clearly(tmp_path, kwargs, error, message):
    arguments = {"source": "s", "section": "s", "folder": tmp_path, "book": None, "profile": "smoke"} | kwargs
    with pytest.raises(error, match=message):
        record_verdicts(**arguments)
    assert list(tmp_path.iterdir()) == []
