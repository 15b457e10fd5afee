"""mkdocs hook: the docstrings cross-reference in Sphinx style (:func:`paged_attention`),
which mkdocstrings renders as the role's name followed by the code; keep only the code."""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:func|class|data|mod|meth|attr|obj):(?=<code>)")


def on_page_content(html: str, **kwargs: object) -> str:
    return _ROLE.sub("", html)
