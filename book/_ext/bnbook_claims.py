"""Re-read the page "The claims, judged" on every build (a local Sphinx extension, loaded from _config.yml).

The page reads the verdict rows the chapters write while they execute (``bnlib.claims``). Sphinx re-reads
only pages whose source changed, and jupyter-cache re-executes only notebooks whose code changed, so an
unchanged claims page would keep the table of an earlier build after a chapter was re-run. This marks the
page outdated on every build; its notebook metadata (``mystnb: execution_mode: force``) makes MyST-NB
execute it every time it is read. It is read after the chapters: Sphinx reads pages in sorted order, and
``book/08_claims`` sorts after ``book/01`` to ``book/07``. That order holds only when pages are read
one after another, so the extension declares itself unsafe for parallel reading: with ``-j``, Sphinx
says so and reads serially.
"""

from __future__ import annotations

__all__ = ["CLAIMS_PAGE", "setup"]

#: The docname of the page that collects every chapter's verdicts.
CLAIMS_PAGE = "book/08_claims"


def _always_reread(app, env, added, changed, removed) -> list[str]:
    return [CLAIMS_PAGE] if CLAIMS_PAGE in env.found_docs else []


def setup(app) -> dict:
    app.connect("env-get-outdated", _always_reread)
    # Not parallel_read_safe: the page must be read after the chapters, which only a serial read ensures.
    return {"version": "1", "parallel_read_safe": False, "parallel_write_safe": True}
