"""Run benchmarks and report ratios against the peers measured in the same run.

Each ``benchmarks/bench_<name>.py`` defines ``run(workdir: Path, quick: bool) -> dict`` returning
``{"title": str, "rows": [{"name": ..., <metric>: ...}, ...], "ratios": {label: float},
"notes": [str]}``; it may give ``"tables": [{"title": str, "rows": [...]}]`` instead of rows, and
``"targets": [{"target": str, "goal": str, "value": float, "met": bool, "by": str}]``. A ``run``
that also takes ``options`` gets the ``-o KEY=VALUE`` pairs. Results are printed and written to
``bench-results/<name>.json``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import pkgutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchmarks

RESULTS = Path(__file__).resolve().parent.parent / "bench-results"


def _available() -> list[str]:
    return sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules(benchmarks.__path__)
        if m.name.startswith("bench_")
    )


def _table(rows: list[dict[str, Any]]) -> None:
    if rows:
        keys = list(dict.fromkeys(k for row in rows for k in row))
        print(" | ".join(keys))
        for row in rows:
            cells = []
            for k in keys:
                v = row.get(k, "")
                cells.append(f"{v:,.3f}" if isinstance(v, float) else str(v))
            print(" | ".join(cells))


def _print(name: str, result: dict[str, Any]) -> None:
    print(f"\n## {result.get('title', name)}")
    _table(result.get("rows", []))
    for table in result.get("tables", []):
        print(f"\n### {table['title']}")
        _table(table["rows"])
    if result.get("targets"):
        print("\n### targets")
    for t in result.get("targets", []):
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        by = f" ({t['by']})" if t.get("by") and t["met"] is False else ""
        print(f"target {t['target']}: {value} (goal {t['goal']}): {verdict}{by}")
    for label, ratio in result.get("ratios", {}).items():
        print(f"ratio {label}: {ratio:.2f}x")
    for note in result.get("notes", []):
        print(f"note: {note}")


def _compile_astream() -> None:
    """Write astream's bytecode, as ``pip install`` does for the peers' packages.

    The benchmark sessions install astream editable, from the source tree, and a fresh child
    process would otherwise compile each module it imports from source when it first needs it
    (under ``PYTHONDONTWRITEBYTECODE``, which this machine sets, every time), inside the timed
    region: ~20-30 ms of the first batch that no installed copy pays.
    """
    import compileall

    import astream

    compileall.compile_dir(Path(astream.__file__).parent, quiet=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all): {_available()}")
    parser.add_argument("--quick", action="store_true", help="smaller inputs, for a smoke run")
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option for the benchmarks that take options (see each module's docstring)",
    )
    args = parser.parse_args(argv)
    names = args.names or _available()
    unknown = sorted(set(names) - set(_available()))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    options = dict(o.partition("=")[::2] for o in args.option)
    _compile_astream()
    RESULTS.mkdir(exist_ok=True)
    failed = False
    for name in names:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        with tempfile.TemporaryDirectory(prefix=f"astream-bench-{name}-") as tmp:
            started = time.perf_counter()
            try:
                if "options" in inspect.signature(module.run).parameters:
                    result = module.run(Path(tmp), quick=args.quick, options=options)
                else:
                    result = module.run(Path(tmp), quick=args.quick)
            except Exception as exc:  # report and go on to the next benchmark
                print(f"\n## {name}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
                failed = True
                continue
        result["seconds"] = round(time.perf_counter() - started, 1)
        _print(name, result)
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
