"""The key table and the model agree: every program key fills a field of
the part it names, every field of those parts has a key, and the TOML name
is the field's name — so a key is declared in one place and its field is
found by name (config.py builds the parts from the table)."""

from __future__ import annotations

import dataclasses

from stem_core import keys as K
from stem_core.model import MasterSpec, Policy, ProgramSpec, RunAs

PARTS = {"policy": Policy, "run_as": RunAs, "program": ProgramSpec}


def fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


#: parts spent while loading, not kept in the model: the name pattern makes
#: the node names (ProgramSpec.nodes)
SPENT = {"node_names": ("name",)}


def test_every_program_key_names_a_field_of_its_part() -> None:
    for key in K.PROGRAM_KEYS.values():
        if key.part in SPENT:
            assert key.toml in SPENT[key.part], f"{key.toml}: part {key.part} is not kept"
            continue
        assert key.part in PARTS, f"{key.toml}: unknown part {key.part!r}"
        assert key.toml in fields(PARTS[key.part]), \
            f"key {key.toml!r} (part {key.part}) has no field of that name in " \
            f"{PARTS[key.part].__name__}: add it"


def test_every_field_of_a_part_has_its_key() -> None:
    keyed = {(k.part, k.toml) for k in K.PROGRAM_KEYS.values()}
    for part, cls in PARTS.items():
        # name_pattern: the spent `name` key, kept for stemctl scale
        for name in fields(cls) - {"name", "policy", "run_as", "name_pattern"}:
            assert (part, name) in keyed, f"{cls.__name__}.{name} has no key in keys.KEYS"


def test_every_master_field_has_its_key() -> None:
    assert fields(MasterSpec) == set(K.MASTER_KEYS)
