"""The built site, read in a real browser: Debian's headless Chromium driven by Selenium.

`make site-test` builds the book in the smoke profile, then runs these tests against the
HTML served on 127.0.0.1. Every page listed in the table of contents is checked: it loads
without JavaScript console errors, its internal links, anchors and images resolve, its
navigation lists every chapter in order, a chapter shows figures and mathematics, and its
Colab and Binder buttons open a notebook that exists in this repository. The search page
must find "momentum". Screenshots of the landing page and the first chapter are written to
``_build/screenshots/`` for people to look at.

The browser runs offline: every host other than 127.0.0.1 fails to resolve, so the test
shows what the site needs from the network, which is nothing: MathJax 3 is served by the
site itself (``make mathjax`` unpacks the npm package into the build). Each chapter is also
held to issue 16's reading rules: no text output wider than its column, no library source
shown without its folded full source (``show_source``'s ``<details>``), every formula typeset
by the local MathJax (no raw TeX left), no console error, and every figure in a cell output
with a caption and alt text. Screenshots of the landing page and of each chapter (its top,
its first figure, its first table, a verdict table where there is one) land in
``_build/screenshots/``.

Environment: BNLIB_SITE_TEST=1 enables the tests (`make test` skips them);
BNLIB_SITE_HTML is the built site (default _build/html); BNLIB_SITE_TOC the table of
contents to check (default _toc.yml).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HTML = (ROOT / os.environ.get("BNLIB_SITE_HTML", "_build/html")).resolve()
TOC = (ROOT / os.environ.get("BNLIB_SITE_TOC", "_toc.yml")).resolve()
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Hosts the site may ask for something: none (MathJax is served by the site itself). A host added
# here is allowed to fail offline; keep it empty.
CDN_HOSTS: set[str] = set()
# Console errors that come from the theme stack itself, not from this book; each with its cause.
KNOWN_UPSTREAM_ERRORS = {
    # pydata-sphinx-theme on a first visit (empty localStorage): its head script sets mode "" and
    # setTheme("") logs this before falling back to "auto".
    "Got invalid theme mode: . Resetting to auto.": "pydata-sphinx-theme, first visit",
}

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("BNLIB_SITE_TEST") != "1", reason="browser test of the built site: run `make site-test`"
    ),
    # selenium's HTTP pool to chromedriver leaves sockets for the garbage collector: not the site's fault.
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


def toc_entries(toc_path: Path = TOC) -> list[str]:
    """Every document of a jb-book table of contents, in reading order (root first)."""
    toc = yaml.safe_load(toc_path.read_text())
    entries = [toc["root"]]

    def walk(items: list[dict]) -> None:
        for item in items:
            if "file" in item:
                entries.append(item["file"])
            walk(item.get("sections", []))
            walk(item.get("chapters", []))

    walk(toc.get("parts", []))
    walk(toc.get("chapters", []))
    return entries


def existing_entries() -> list[str]:
    """The entries whose source exists (a chapter being written is not there yet)."""
    return [e for e in toc_entries() if any((ROOT / f"{e}{ext}").exists() for ext in (".md", ".ipynb"))]


ENTRIES = existing_entries()
ROOT_DOC = toc_entries()[0]
CHAPTERS = [e for e in ENTRIES if re.fullmatch(r"book/\d\d_\w+", e)]


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)


@functools.cache
def anchors_of(path: Path) -> frozenset[str]:
    parser = _Ids()
    parser.feed(path.read_text(encoding="utf-8"))
    return frozenset(parser.ids)


@dataclass
class Page:
    entry: str
    url: str
    console: list[dict]
    requests: list[str]
    failed: list[tuple[str, str]]
    references: list[dict]
    broken_images: list[str]
    nav: list[str]
    next_link: str | None
    math: dict
    output_images: int
    launch: list[str]
    reading: dict
    notes: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def server():
    if not (HTML / "index.html").exists():
        pytest.fail(f"no built site at {HTML}: run `make site` (or `make site-test`)")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest's output readable
            pass

    handler = functools.partial(Quiet, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    for program in (CHROMIUM, CHROMEDRIVER):
        if not os.access(program, os.X_OK):
            pytest.fail(f"{program} is missing: `make browser` installs Debian's chromium and chromium-driver")
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never download a driver or a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        # Offline, deterministically: only the local server resolves.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


_pages: dict[str, Page] = {}

_COLLECT = """
const refs = [];
const add = (kind, selector, attr) => {
  for (const el of document.querySelectorAll(selector)) refs.push({kind, url: el[attr], raw: el.getAttribute(attr)});
};
add('link', 'a[href]', 'href');
add('image', 'img[src]', 'src');
add('script', 'script[src]', 'src');
add('link-tag', 'link[href]', 'href');
const broken = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src);
const nav = [...document.querySelectorAll('nav.bd-docs-nav a.reference.internal')].map(a => a.href);
const next = document.querySelector('a.right-next');
const tex = [...document.querySelectorAll('.math')].filter(e => /\\\\\\(|\\\\\\[|\\$/.test(e.textContent)).length;
const math = {
  rendered: document.querySelectorAll('mjx-container').length,
  tex_source: tex,
  errors: document.querySelectorAll('mjx-merror, .MathJax_Error').length,
  mathjax_loaded: !!(window.MathJax && window.MathJax.version),
};
const outputImages = document.querySelectorAll('.cell_output img').length;
return {refs, broken, nav, next: next ? next.href : null, math, outputImages};
"""

# Waits for MathJax's startup typesetting (the script is deferred); answers what happened.
_MATHJAX_DONE = """
const done = arguments[arguments.length - 1];
const timer = setTimeout(() => done('timeout: MathJax did not finish typesetting in 30 s'), 30000);
const finish = (what) => { clearTimeout(timer); done(what); };
if (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) {
  window.MathJax.startup.promise.then(() => finish('typeset'), (e) => finish('error: ' + e));
} else {
  finish('MathJax did not load');
}
"""

# Issue 16's reading rules, measured on the laid-out page.
_READING = """
const column = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
const columnRight = column.getBoundingClientRect().right;
const short = (text) => text.replace(/\\s+/g, ' ').trim().slice(0, 90);
const wide = [];
for (const el of document.querySelectorAll('.cell_output pre, .cell_output > .output')) {
  if (el.closest('details')) continue;  // show_source's folded part: shown on request, wraps there too
  const box = el.getBoundingClientRect();
  if (el.scrollWidth > el.clientWidth + 1 || box.right > columnRight + 1) {
    wide.push({text: short(el.textContent), scrollWidth: el.scrollWidth, clientWidth: el.clientWidth,
               overhang: Math.round(box.right - columnRight)});
  }
}
const unfolded = [];
for (const pre of document.querySelectorAll('.cell_output pre')) {
  const text = pre.textContent.replace(/^\\s+/, '');
  if (!/^(@[\\w.]+|async def |def |class )/.test(text)) continue;
  const box = pre.closest('.bnlib-source');
  if (!box || !box.querySelector('details')) unfolded.push(short(text.split('\\n')[0]));
}
for (const box of document.querySelectorAll('.bnlib-source')) {
  if (!box.querySelector('details > summary')) unfolded.push('a show_source output without its <details>');
}
const sources = document.querySelectorAll('.bnlib-source').length;
const mathElements = [...document.querySelectorAll('.math')];
const untypeset = mathElements.filter(e => !e.querySelector('mjx-container')).map(e => short(e.textContent));
const prose = (document.querySelector('article.bd-article') || document.body).cloneNode(true);
for (const el of prose.querySelectorAll('pre, code, script, style, mjx-container, .cell_input')) el.remove();
const rawTex = (prose.textContent.match(/\\$\\$|\\\\\\(|\\\\\\[|\\\\begin\\{/g) || []).length;
const mathjaxScripts = [...document.querySelectorAll('script[src]')].map(e => e.src).filter(u => /mathjax/i.test(u));
const figures = [...document.querySelectorAll('.cell_output img')].map(img => {
  const figure = img.closest('figure');
  const caption = figure ? figure.querySelector('figcaption') : null;
  return {src: img.getAttribute('src'), alt: (img.getAttribute('alt') || '').trim(),
          caption: caption ? short(caption.textContent) : ''};
});
const icon = document.querySelector('link[rel~="icon"]');
return {wide, unfolded, sources, mathCount: mathElements.length, untypeset, rawTex, mathjaxScripts,
        mathjaxVersion: (window.MathJax && window.MathJax.version) || null,
        containers: document.querySelectorAll('mjx-container').length, figures,
        favicon: icon ? icon.href : null};
"""


def visit(driver, base: str, entry: str) -> Page:
    """Load one page once; every test reads the same record."""
    if entry in _pages:
        return _pages[entry]
    driver.get_log("browser")  # drop what earlier pages left
    driver.get_log("performance")
    url = f"{base}/{entry}.html"
    driver.get(url)
    deadline = time.time() + 10  # MathJax and the theme's scripts are deferred: let them finish
    while time.time() < deadline and driver.execute_script("return document.readyState") != "complete":
        time.sleep(0.1)
    time.sleep(0.5)
    driver.set_script_timeout(40)
    mathjax = driver.execute_async_script(_MATHJAX_DONE)
    data = driver.execute_script(_COLLECT)
    reading = driver.execute_script(_READING) | {"mathjax": mathjax}
    console = driver.get_log("browser")
    requests, failed = [], []
    ids: dict[str, str] = {}
    for record in driver.get_log("performance"):
        message = json.loads(record["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            requests.append(params["request"]["url"])
            ids[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed":
            failed.append((ids.get(params["requestId"], "?"), params.get("errorText", "")))
    launch = driver.execute_script(
        "return [...document.querySelectorAll('a[href]')].map(a => a.href)"
        ".filter(h => h.startsWith(arguments[0]) || h.startsWith(arguments[1]))",
        CONFIG["launch_buttons"]["colab_url"],
        CONFIG["launch_buttons"]["binderhub_url"],
    )
    page = Page(
        entry=entry,
        url=url,
        console=console,
        requests=requests,
        failed=failed,
        references=data["refs"],
        broken_images=data["broken"],
        nav=data["nav"],
        next_link=data["next"],
        math=data["math"],
        output_images=data["outputImages"],
        launch=launch,
        reading=reading,
    )
    _pages[entry] = page
    return page


def local_path(url: str, base: str) -> tuple[Path, str] | None:
    """The file a same-origin URL serves, and its fragment; None for another origin."""
    if not url.startswith(base + "/"):
        return None
    parts = urllib.parse.urlsplit(url)
    path = HTML / urllib.parse.unquote(parts.path).lstrip("/")
    if path.is_dir():
        path = path / "index.html"
    return path, parts.fragment


def is_cdn(url: str) -> bool:
    return urllib.parse.urlsplit(url).hostname in CDN_HOSTS


def test_the_toc_has_pages():
    assert ENTRIES, f"{TOC} lists no document that exists"
    missing = [e for e in toc_entries() if e not in ENTRIES]
    if missing:
        print(f"not written yet, not checked: {missing}")


@pytest.mark.parametrize("entry", ENTRIES)
def test_page_loads_without_console_errors(browser, server, entry):
    page = visit(browser, server, entry)
    severe = [
        m
        for m in page.console
        if m["level"] == "SEVERE"
        and not any(h in m["message"] for h in CDN_HOSTS)
        and not any(known in m["message"] for known in KNOWN_UPSTREAM_ERRORS)
    ]
    assert not severe, f"{entry}: JavaScript console errors:\n" + "\n".join(m["message"] for m in severe)
    foreign = sorted({u for u in page.requests if u.startswith("http") and not u.startswith(server) and not is_cdn(u)})
    assert not foreign, f"{entry} asks hosts other than the site and {sorted(CDN_HOSTS)} for: {foreign}"
    local_failures = [(u, e) for u, e in page.failed if u.startswith(server)]
    assert not local_failures, f"{entry}: requests to the site failed: {local_failures}"


@pytest.mark.parametrize("entry", ENTRIES)
def test_internal_links_anchors_and_images_resolve(browser, server, entry):
    page = visit(browser, server, entry)
    this_file = HTML / f"{entry}.html"
    problems = []
    for ref in page.references:
        if ref["url"].startswith(("mailto:", "javascript:", "data:")):
            continue
        target = local_path(ref["url"], server)
        if target is None:
            continue
        path, fragment = target
        if not path.exists():
            problems.append(f"{ref['kind']} {ref['raw']!r} -> {path.relative_to(HTML)} does not exist")
        elif fragment and ref["kind"] == "link" and path.suffix == ".html" and fragment not in anchors_of(path):
            where = "this page" if path == this_file else str(path.relative_to(HTML))
            problems.append(f"link {ref['raw']!r}: no id {fragment!r} on {where}")
    problems += [f"image did not load: {src}" for src in page.broken_images if not is_cdn(src)]
    assert not problems, f"{entry}:\n" + "\n".join(problems)


def _relative(url: str, server: str) -> str:
    path = urllib.parse.urlsplit(url).path
    return path.lstrip("/").removesuffix(".html") if url.startswith(server) else url


@pytest.mark.parametrize("entry", ENTRIES)
def test_navigation_lists_every_chapter_in_order(browser, server, entry):
    page = visit(browser, server, entry)
    nav = list(dict.fromkeys(_relative(u, server) for u in page.nav))
    assert nav == ENTRIES, f"{entry}: the sidebar lists {nav}, the table of contents {ENTRIES}"
    position = ENTRIES.index(entry)
    expected_next = ENTRIES[position + 1] if position + 1 < len(ENTRIES) else None
    actual_next = _relative(page.next_link, server) if page.next_link else None
    assert actual_next == expected_next, f"{entry}: 'next' goes to {actual_next}, expected {expected_next}"


@pytest.mark.parametrize("entry", CHAPTERS)
def test_chapter_shows_figures_and_mathematics(browser, server, entry):
    page = visit(browser, server, entry)
    assert page.output_images > 0, f"{entry}: no figure in the cell outputs (the house guide asks for one per chapter)"
    assert page.reading["mathCount"] > 0, f"{entry}: no mathematics on the page"


@pytest.mark.parametrize("entry", ENTRIES)
def test_formulas_are_typeset_offline_by_the_sites_own_mathjax(browser, server, entry):
    page = visit(browser, server, entry)
    reading = page.reading
    if not reading["mathCount"] and not reading["mathjaxScripts"]:
        return  # a page without formulas (Sphinx loads MathJax only where there is mathematics)
    foreign = [u for u in reading["mathjaxScripts"] if not u.startswith(server + "/")]
    assert not foreign, f"{entry}: MathJax comes from another host {foreign}: formulas fail offline"
    assert reading["mathjaxScripts"], f"{entry}: {reading['mathCount']} formulas but no MathJax script on the page"
    assert reading["mathjax"] == "typeset", f"{entry}: {reading['mathjax']} ({reading['mathjaxScripts']})"
    assert str(reading["mathjaxVersion"]).startswith("3."), f"{entry}: MathJax {reading['mathjaxVersion']}, expected 3"
    assert not reading["untypeset"], (
        f"{entry}: {len(reading['untypeset'])} of {reading['mathCount']} formulas left as TeX, e.g. "
        f"{reading['untypeset'][:3]}"
    )
    assert page.math["errors"] == 0, f"{entry}: MathJax reported {page.math['errors']} TeX errors"
    assert reading["rawTex"] == 0, f"{entry}: {reading['rawTex']} raw TeX delimiters ($$, \\(, \\[) left in the prose"


@pytest.mark.parametrize("entry", ENTRIES)
def test_text_outputs_fit_the_column(browser, server, entry):
    wide = visit(browser, server, entry).reading["wide"]
    assert not wide, f"{entry}: {len(wide)} cell outputs wider than the column (sideways scrolling):\n" + "\n".join(
        f"  {w['scrollWidth']} px of text in {w['clientWidth']} px, {w['overhang']} px past the column: {w['text']}"
        for w in wide[:10]
    )


@pytest.mark.parametrize("entry", ENTRIES)
def test_library_source_is_folded(browser, server, entry):
    unfolded = visit(browser, server, entry).reading["unfolded"]
    assert not unfolded, (
        f"{entry}: library source shown unfolded (show_source folds the full source in <details>): {unfolded[:5]}"
    )


@pytest.mark.parametrize("entry", CHAPTERS)
def test_figures_have_a_caption_and_alt_text(browser, server, entry):
    figures = visit(browser, server, entry).reading["figures"]
    # MyST-NB's default alt text is the image's file name: that is no description.
    bare = [
        f
        for f in figures
        if not f["caption"] or not f["alt"] or f["alt"] == f["src"] or re.search(r"\.(png|jpe?g|svg|gif)$", f["alt"])
    ]
    assert not bare, f"{entry}: {len(bare)} of {len(figures)} figures lack a caption or alt text:\n" + "\n".join(
        f"  {f['src']}: caption {f['caption']!r:.40}, alt {f['alt']!r:.40}" for f in bare
    )


@pytest.mark.parametrize("entry", ENTRIES)
def test_page_has_the_sites_favicon(browser, server, entry):
    icon = visit(browser, server, entry).reading["favicon"]
    assert icon and icon.startswith(server + "/"), f"{entry}: no favicon link served by the site ({icon})"
    assert local_path(icon, server)[0].is_file(), f"{entry}: the favicon {icon} is missing from the build"


@pytest.mark.parametrize("entry", CHAPTERS)
def test_launch_buttons_open_a_notebook_in_this_repository(browser, server, entry):
    page = visit(browser, server, entry)
    colab_url = CONFIG["launch_buttons"]["colab_url"].rstrip("/")
    binder_url = CONFIG["launch_buttons"]["binderhub_url"].rstrip("/")
    slug = urllib.parse.urlsplit(CONFIG["repository"]["url"]).path.strip("/")
    branch = CONFIG["repository"]["branch"]
    colab = [u for u in page.launch if u.startswith(colab_url)]
    binder = [u for u in page.launch if u.startswith(binder_url)]
    assert colab and binder, f"{entry}: launch links missing (Colab {colab}, Binder {binder})"
    paths = []
    for url in colab:
        prefix = f"{colab_url}/github/{slug}/blob/{branch}/"
        assert url.startswith(prefix), f"{entry}: Colab link {url} is not under {prefix}"
        paths.append(url.removeprefix(prefix))
    for url in binder:
        parts = urllib.parse.urlsplit(url)
        assert parts.path == f"/v2/gh/{slug}/{branch}", f"{entry}: Binder link {url} does not open {slug}@{branch}"
        urlpath = urllib.parse.parse_qs(parts.query)["urlpath"][0]
        paths.append(re.sub(r"^(tree|lab/tree|notebooks)/", "", urlpath))
    for path in paths:
        assert path == f"{entry}.ipynb", f"{entry}: a launch button opens {path}, expected {entry}.ipynb"
        assert (ROOT / path).is_file(), f"{entry}: a launch button opens {path}, which is not in the repository"
        if os.environ.get("CI") and shutil.which("git") and (ROOT / ".git").exists():
            tracked = subprocess.run(
                ["git", "ls-files", "--error-unmatch", path], cwd=ROOT, capture_output=True, check=False
            )
            assert tracked.returncode == 0, f"{entry}: {path} exists but is not committed"


def test_search_finds_momentum(browser, server):
    browser.get(f"{server}/search.html?q=momentum")
    deadline = time.time() + 30
    results: list[str] = []
    while time.time() < deadline:
        results = browser.execute_script(
            "return [...document.querySelectorAll('#search-results li a')].map(a => a.href)"
        )
        summary = browser.execute_script(
            "const s = document.querySelector('.search-summary'); return s ? s.textContent : ''"
        )
        if results or "did not match" in summary:
            break
        time.sleep(0.2)
    assert results, "the search page found nothing for 'momentum'"
    pages = {_relative(u.split("#")[0].split("?")[0], server) for u in results}
    assert pages & set(ENTRIES), f"search results {sorted(pages)} include no page of the table of contents"


_SCROLL_TO = """
const [kind] = arguments;
let el = null;
if (kind === 'figure') {
  el = document.querySelector('.cell_output figure') || document.querySelector('.cell_output img');
} else if (kind === 'table') {
  const tables = [...document.querySelectorAll('.cell_output table')];
  el = tables.find(t => /verdict/i.test(t.textContent)) || tables[0] || null;
}
if (!el) return false;
el.scrollIntoView({block: 'start'});
window.scrollBy(0, -80);
return true;
"""


def test_screenshots(browser, server):
    """The landing page, and per chapter its top, first figure and first (verdict) table, for people to look at."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    saved = []
    browser.get(f"{server}/index.html")
    time.sleep(1.0)
    shots = [("landing.png", None)]
    for entry in CHAPTERS:
        shots += [(f"{Path(entry).name[:2]}_{kind}.png", (entry, kind)) for kind in ("top", "figure", "table")]
    for name, what in shots:
        if what is not None:
            entry, kind = what
            if kind == "top":
                browser.get(f"{server}/{entry}.html")
                browser.set_script_timeout(40)
                browser.execute_async_script(_MATHJAX_DONE)
                time.sleep(0.5)
            elif not browser.execute_script(_SCROLL_TO, kind):
                print(f"{entry}: no {kind} to photograph")
                continue
            time.sleep(0.3)
        assert browser.save_screenshot(str(SCREENSHOTS / name)), f"could not save {name}"
        assert (SCREENSHOTS / name).stat().st_size > 10_000, f"{name} looks blank"
        saved.append(name)
    print(f"screenshots in {SCREENSHOTS}: {', '.join(saved)}")
