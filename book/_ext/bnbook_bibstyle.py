"""Author-year labels for the book's reference lists (a local Sphinx extension, loaded from _config.yml).

sphinxcontrib-bibtex's ``author_year`` reference style already cites as "Ioffe and Szegedy, 2015" in the
text, but the lists keep the bibliography style's labels, ``[IS15]`` for pybtex's ``alpha``. This registers
a pybtex style, ``bnbook``, whose labels are author-year too ("Ioffe and Szegedy, 2015", "Santurkar et al.,
2018"; a second work of the same authors and year gets "2018a", "2018b"), sorted by author, year and title.
"""

from __future__ import annotations

import re
from collections import Counter

from pybtex.plugin import register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle

__all__ = ["AuthorYearLabelStyle", "AuthorYearStyle", "setup"]


def _last_name(person) -> str:
    name = " ".join(person.prelast_names + person.last_names)
    return re.sub(r"[{}\\]", "", name)


def _authors(entry) -> str:
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    if not people:
        return re.sub(r"[{}\\]", "", entry.fields.get("organization", entry.fields.get("title", entry.key)))
    if len(people) == 1:
        return _last_name(people[0])
    if len(people) == 2 and _last_name(people[1]) != "others":  # BibTeX's "and others" is et al.
        return f"{_last_name(people[0])} and {_last_name(people[1])}"
    return f"{_last_name(people[0])} et al."


def assign_labels(entries) -> dict[str, str]:
    """Each entry's key -> its author-year label, "a", "b", ... appended (in title order) where two would agree."""
    entries = sorted(entries, key=lambda e: (e.fields.get("year", ""), e.fields.get("title", "").lower(), e.key))
    base = {e.key: f"{_authors(e)}, {e.fields.get('year', 'n.d.')}" for e in entries}
    counts = Counter(base.values())
    seen: Counter = Counter()
    labels = {}
    for e in entries:
        label = base[e.key]
        if counts[label] > 1:
            seen[label] += 1
            label += "abcdefghijklmnopqrstuvwxyz"[seen[label] - 1]
        labels[e.key] = label
    return labels


# Labels over every entry of the book's .bib files (filled when Sphinx starts), so that a chapter citing
# only one of LeCun et al.'s two 1998 works still calls it by its book-wide label ("1998b").
_BOOK_LABELS: dict[str, str] = {}


class AuthorYearLabelStyle(BaseLabelStyle):
    """Labels "Authors, year", with a, b, ... when two works of the book would get the same label."""

    def format_labels(self, sorted_entries):
        entries = list(sorted_entries)
        local = assign_labels(entries)
        for entry in entries:
            yield _BOOK_LABELS.get(entry.key, local[entry.key])


class AuthorYearStyle(UnsrtStyle):
    """pybtex's unsrt entries, author-year labels, sorted by author, year and title."""

    default_label_style = "bnbook_author_year"
    default_sorting_style = "author_year_title"


register_plugin("pybtex.style.labels", "bnbook_author_year", AuthorYearLabelStyle)
register_plugin("pybtex.style.formatting", "bnbook", AuthorYearStyle)


def _read_book_labels(app) -> None:
    from pathlib import Path

    from pybtex.database import parse_file

    entries = []
    for name in app.config.bibtex_bibfiles:
        entries += parse_file(Path(app.srcdir) / name).entries.values()
    _BOOK_LABELS.clear()
    _BOOK_LABELS.update(assign_labels(entries))


def setup(app):
    app.connect("builder-inited", _read_book_labels)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
