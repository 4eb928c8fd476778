"""Execute chapters one at a time in a run profile, timing each: how the `full` times in README.md were measured.

    BNLIB_PROFILE=full .venv/bin/python scripts/run_chapter.py 03_lenet5_pytorch [more chapters] --out _build/full

Each chapter's executed notebook lands in OUT/<chapter>.ipynb, its verdict rows in OUT/verdicts/ (the
folder the page "The claims, judged" reads when BNLIB_VERDICTS_DIR points there), and one JSON line per
chapter is appended to OUT/times.jsonl: profile, wall seconds, whether it finished, the load average
before and after (another process on the machine slows a run down), CPU count and torch's device.
Run it alone: two trainings on the same cores slow each other and spoil both timings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(chapter: str, out: Path) -> dict:
    """Execute one chapter, write its executed notebook to OUT and append its time to OUT/times.jsonl."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    import bnlib

    source = ROOT / "book" / f"{chapter}.ipynb"
    if not source.is_file():
        raise SystemExit(f"no chapter {source}: give a file name from book/ without suffix, e.g. 03_lenet5_pytorch")
    notebook = nbformat.read(source, as_version=4)
    client = NotebookClient(
        notebook, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "book")}}
    )
    record = {
        "chapter": chapter,
        "profile": bnlib.run_profile().name,
        "cpus": os.cpu_count(),
        "device": str(bnlib.get_device()),
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "load_before": os.getloadavg(),
    }
    # A failed run must not leave an earlier run's rows behind, looking current.
    (Path(os.environ["BNLIB_VERDICTS_DIR"]) / f"{chapter}.json").unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        client.execute()
        record["finished"], record["error"] = True, None
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as error:  # recorded; the next chapter runs
        text = str(error)
        record["finished"], record["error"] = False, text.splitlines()[-1][:500] if text else repr(error)
    record["seconds"] = round(time.perf_counter() - start, 1)
    record["load_after"] = os.getloadavg()
    nbformat.write(notebook, out / f"{chapter}.ipynb")
    with (out / "times.jsonl").open("a") as stream:
        stream.write(json.dumps(record) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    """Run the chapters named on the command line, one after another; exit 1 if any failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="+", help="chapter file names without suffix, e.g. 03_lenet5_pytorch")
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "chapter-runs")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("BNLIB_VERDICTS_DIR", str(out / "verdicts"))
    failed = 0
    for chapter in args.chapters:
        record = run(chapter, out)
        failed += not record["finished"]
        print(json.dumps(record), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
