"""Files rendered from the key table must match it (run `make generated`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from stem_core import keys as K

ROOT = Path(__file__).resolve().parent.parent


def _generate():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("generate", ROOT / "tools/generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_envfile_is_generated() -> None:
    from stem_core.config import sample_envfile

    assert (ROOT / "etc/default/stem").read_text() == sample_envfile(), "run make generated"


def test_configuration_doc_lists_every_key() -> None:
    text = (ROOT / "docs/configuration.md").read_text()
    assert _generate().render_docs(text) == text, "run make generated"
    for key in K.KEYS:
        assert (key.env or key.toml) in text


def test_every_key_is_documented_and_its_default_parses() -> None:
    for key in K.KEYS:
        assert key.doc
        if key.default is not None and key.env:
            assert key.parse(key.default_text) == key.default or key.toml == "nodes"
