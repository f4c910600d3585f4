"""Write the files rendered from the key table: etc/default/stem and the key
reference in docs/configuration.md. `make generated` runs this; a test fails
when the committed files differ from what the table renders."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stem_core.config import key_reference_markdown, sample_envfile  # noqa: E402

START, END = "<!-- keys:start -->", "<!-- keys:end -->"


def render_docs(text: str) -> str:
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{key_reference_markdown()}{END}{tail}"


def main() -> None:
    (ROOT / "etc/default/stem").write_text(sample_envfile())
    docs = ROOT / "docs/configuration.md"
    docs.write_text(render_docs(docs.read_text()))


if __name__ == "__main__":
    main()
