"""Write one benchmark's section into docs/benchmarks.md, between its own markers."""
from __future__ import annotations

import platform
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEvery number below is written by the command shown above it.\n"


def write_section(key: str, body: str, doc: Path = DOC) -> None:
    """Replace section ``key`` of the page (append it when new); its title goes one level under
    the page's questions (``## How accurate?``)."""
    body = re.sub(r"^## ", "### ", body, flags=re.M)
    text = doc.read_text() if doc.exists() else HEADER
    block = f"<!-- {key}:start -->\n{body.rstrip()}\n\nMachine: {platform.processor() or platform.machine()}, " \
            f"Python {platform.python_version()}.\n<!-- {key}:end -->"
    pattern = re.compile(rf"<!-- {re.escape(key)}:start -->.*?<!-- {re.escape(key)}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(exist_ok=True)
    doc.write_text(text)
