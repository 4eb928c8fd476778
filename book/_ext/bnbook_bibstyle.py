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


class AuthorYearLabelStyle(BaseLabelStyle):
    """Labels "Authors, year", with a, b, ... when two works would get the same label."""

    def format_labels(self, sorted_entries):
        entries = list(sorted_entries)
        labels = [f"{_authors(e)}, {e.fields.get('year', 'n.d.')}" for e in entries]
        counts = Counter(labels)
        seen: Counter = Counter()
        for label in labels:
            if counts[label] > 1:
                seen[label] += 1
                yield f"{label}{'abcdefghijklmnopqrstuvwxyz'[seen[label] - 1]}"
            else:
                yield label


class AuthorYearStyle(UnsrtStyle):
    """pybtex's unsrt entries, author-year labels, sorted by author, year and title."""

    default_label_style = "bnbook_author_year"
    default_sorting_style = "author_year_title"


register_plugin("pybtex.style.labels", "bnbook_author_year", AuthorYearLabelStyle)
register_plugin("pybtex.style.formatting", "bnbook", AuthorYearStyle)


def setup(app):  # Sphinx's extension hook; the plugins are registered on import
    return {"parallel_read_safe": True, "parallel_write_safe": True}

