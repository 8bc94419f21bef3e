"""mkdocs hooks: render the Sphinx roles of astream's docstrings as links.

mkdocstrings' Sphinx parser reads the ``:param:`` fields but leaves inline roles
(``:class:`~astream.errors.StorageError```) as text. This hook turns each into an autorefs
reference, which links to the object where the API page documents it and is plain code where
it does not (``optional``). ``~`` shows the last component only, as Sphinx does. A
reStructuredText ``::`` before a literal block, which Markdown renders as its own paragraph,
is dropped (the block after it is already code).
"""

from __future__ import annotations

import html
import re
from typing import Any

_ROLE = re.compile(r":(?:class|meth|func|data|mod|attr|exc|obj):<code>(~?)([^<]+)</code>")


def _reference(match: re.Match[str]) -> str:
    short, target = match.group(1), html.unescape(match.group(2))
    shown = target.rsplit(".", 1)[-1] if short else target
    identifier = html.escape(target.lstrip("."), quote=True)
    return (
        f'<autoref identifier="{identifier}" optional><code>{html.escape(shown)}</code></autoref>'
    )


def on_page_content(content: str, **kwargs: Any) -> str:
    """Replace every Sphinx role in the rendered page, and drop bare ``::`` paragraphs."""
    return _ROLE.sub(_reference, content).replace("<p>::</p>", "")
