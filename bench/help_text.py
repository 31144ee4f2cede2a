"""The ``--help`` description of a bench script: the first sentence of its docstring."""

from __future__ import annotations

import re


def first_sentence(doc: str) -> str:
    """The text up to the first period that ends a sentence (followed by a space or the end),
    wrapped lines joined; the whole first paragraph where none ends in a period."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    match = re.match(r"(.+?\.)(?=\s|$)", paragraph)
    return match.group(1) if match else paragraph
