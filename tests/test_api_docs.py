"""docs/api.md documents every public name, and each with its parameters spelled out."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

import astream
from astream.errors import MissingDependencyError

API_PAGE = Path(__file__).resolve().parent.parent / "docs" / "api.md"

# Names the page mentions in its text instead of rendering them: an alias and a string.
ALIASES = {"JSONWriter": "`JSONWriter` is `JSONLWriter`", "__version__": "`__version__`"}

# Callables that take **kwargs on purpose, and where their page says what goes there.
OPEN_KWARGS = {
    "StreamingDataLoader": "torch's DataLoader arguments, passed through",
    "open_store": "backend options (endpoint_url, unsigned, ...), per backend",
}

WRITERS = ["MDSWriter", "JSONLWriter", "CSVWriter", "TSVWriter", "XSVWriter"]


def _documented() -> dict[str, Any]:
    """``::: module.name`` directive target -> the object it renders; targets whose module
    needs an extra this environment lacks (the Spark and Ray writers: ``nox -s engines``) are
    left out: none of them is a name of ``astream.__all__``."""
    objects: dict[str, Any] = {}
    for target in re.findall(r"^::: ([\w.]+)", API_PAGE.read_text(), re.MULTILINE):
        module, _, name = target.rpartition(".")
        try:
            try:
                objects[target] = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):
                objects[target] = importlib.import_module(target)
        except MissingDependencyError:
            continue
    return objects


@pytest.mark.parametrize("name", astream.__all__)
def test_every_public_name_is_on_the_api_page(name: str) -> None:
    if name in ALIASES:
        assert ALIASES[name] in API_PAGE.read_text()
        return
    public = getattr(astream, name)
    rendered = [t for t, obj in _documented().items() if obj is public]
    assert rendered, f"docs/api.md has no '::: ...{name}' rendering astream.{name}"


@pytest.mark.parametrize("name", [n for n in astream.__all__ if callable(getattr(astream, n))])
def test_public_callables_spell_out_their_parameters(name: str) -> None:
    obj = getattr(astream, name)
    if isinstance(obj, type) and issubclass(obj, BaseException):
        return  # one message string, as every astream error
    hidden = [
        p.name
        for p in inspect.signature(obj).parameters.values()
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    assert not hidden or name in OPEN_KWARGS, f"{name} hides parameters behind {hidden}"


@pytest.mark.parametrize("name", WRITERS)
def test_writers_document_every_parameter(name: str) -> None:
    writer = getattr(astream, name)
    docs = inspect.getdoc(writer) or ""
    if "The other parameters are :class:`MDSWriter`'s." in docs:
        docs += inspect.getdoc(astream.MDSWriter) or ""
    for parameter in inspect.signature(writer).parameters:
        assert f":param {parameter}:" in docs, f"{name}({parameter}=...) is not documented"
    # The local writers' keyword arguments are all there, by the same names and defaults.
    local = importlib.import_module("astream.format.writer").ShardWriter
    for parameter in inspect.signature(local).parameters.values():
        assert inspect.signature(writer).parameters[parameter.name].default == parameter.default


def test_the_docs_hook_renders_sphinx_roles_as_references() -> None:
    import mkdocs_hooks

    page = (
        "<p>raises :class:<code>~astream.errors.StorageError</code> via "
        ":meth:<code>write</code></p><p>::</p><pre>code</pre>"
    )
    assert mkdocs_hooks.on_page_content(page) == (
        '<p>raises <autoref identifier="astream.errors.StorageError" optional>'
        "<code>StorageError</code></autoref> via "
        '<autoref identifier="write" optional><code>write</code></autoref></p><pre>code</pre>'
    )
