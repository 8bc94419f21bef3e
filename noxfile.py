"""Developer and CI sessions: ``nox -s tests engines lint typecheck interop docs`` (CI),
``demo``, ``bench``, ``soak``.

Every session that could pull torch installs ``torch==2.13.0`` first: that exact version is a CPU
wheel on the build machines' disk, while any open range would download a multi-GB CUDA build.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_external_run = True

ROOT = Path(__file__).parent
TORCH = "torch==2.13.0"
PYTHON = "3.11"
SERVERS = ROOT / "tests" / "servers"


def _install_node_servers(session: nox.Session) -> None:
    """Install Azurite and s3rver from tests/servers/package.json (skipped without npm)."""
    if shutil.which("npm") is None:
        session.warn("npm not found: Azurite-backed tests will be skipped with a reason")
        return
    if (SERVERS / "node_modules" / ".package-lock.json").exists():
        return
    session.run(
        "npm",
        "install",
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
        "--prefix",
        str(SERVERS),
        external=True,
    )


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The default test suite, against real servers on loopback."""
    session.install(TORCH)
    session.install("-e", ".[test]")
    _install_node_servers(session)
    session.run("pytest", "-m", "not interop and not engines", "--durations=15", *session.posargs)


#: The tests that write on Spark or Ray (marker ``engines``).
ENGINE_TESTS = ["tests/integrations/test_spark.py", "tests/integrations/test_ray.py"]


@nox.session(python=PYTHON)
def engines(session: nox.Session) -> None:
    """The Spark and Ray writer tests and examples (pyspark needs Java): heavy installs, minutes."""
    session.install(TORCH)
    session.install("-e", ".[test,spark,ray]")
    # The tests skip without an engine (or Java): here that would pass with nothing run.
    session.run(
        "python",
        "-c",
        "import shutil, pyspark, ray.data; "
        "assert shutil.which('java'), 'pyspark needs Java: java is not on PATH'",
    )
    session.run(
        "pytest", "-m", "engines", *ENGINE_TESTS, "tests/test_examples.py", *session.posargs
    )


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """Kill loops and fault injection for N minutes, then a table of outcomes (not in CI).

    ``nox -s soak -- 10`` runs 10 minutes (default 5): tests/reliability/soak.py.
    """
    session.install(TORCH)
    session.install("-e", ".[test]")
    session.run("python", "tests/reliability/soak.py", *session.posargs)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The main job: write a sample dataset, serve it over HTTP on loopback, stream it."""
    session.install(TORCH)
    session.install("-e", ".")
    session.run("python", "examples/quickstart.py", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "astream", "tests", "benchmarks", "examples", "noxfile.py")
    session.run(
        "ruff", "format", "--check", "astream", "tests", "benchmarks", "examples", "noxfile.py"
    )


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on astream/ (with Ray installed: astream.integrations.ray subclasses its
    Datasink and Datasource)."""
    session.install(TORCH)
    session.install("-e", ".[test,spark,ray]", "mypy>=1.10")
    session.run("mypy")


def _install_reference(session: nox.Session) -> None:
    """mosaicml-streaming, isolated: its own numpy pin, a tiny torchvision stand-in."""
    session.install(TORCH)
    session.install("-r", "tests/interop/requirements.txt")
    session.install("--no-deps", "mosaicml-streaming==0.13.0")
    session.install("-e", ".[test,spark,ray]")  # the engines' interop tests and writers_scale
    stubs = str(ROOT / "tests" / "interop" / "_stubs")
    session.env["PYTHONPATH"] = os.pathsep.join(
        p for p in (stubs, session.env.get("PYTHONPATH", "")) if p
    )


@nox.session(python=PYTHON)
def interop(session: nox.Session) -> None:
    """Read and write datasets with mosaicml-streaming; compare sample orders with it."""
    _install_reference(session)
    # Its lock files and shared memory go to their own temp dir (see shared/TESTING.md).
    tmp = Path(session.create_tmp()) / "ref-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    session.env["TMPDIR"] = str(tmp)
    session.run("pytest", "-m", "interop", "tests/interop", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks against the peers, in one run; writes bench-results/*.json."""
    _install_reference(session)
    session.install("-r", "benchmarks/requirements.txt")
    _install_node_servers(session)
    session.env["LITDATA_DISABLE_VERSION_CHECK"] = "1"
    tmp = Path(session.create_tmp()) / "bench-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    session.env["TMPDIR"] = str(tmp)
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation with mkdocs in strict mode."""
    session.install(TORCH)
    session.install("-e", ".[docs,all]")
    session.run("mkdocs", "build", "--strict", "--site-dir", str(ROOT / "site"))
