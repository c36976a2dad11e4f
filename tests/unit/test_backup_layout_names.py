"""A table's name in a backup object's key: one segment whatever the name, never another table's, and a plain name
as it always was (so the keys of backups written before still name the same objects)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from lethe.backup import digest_state, layout

SID = "20261201T020000Z"
ODD = [
    "a",
    "a/b",
    "a/",
    "/a",
    "a//b",
    "a%2Fb",
    "a%252Fb",
    "100%",
    "with space",
    "Übung/名前",
    "../../...up",
    "..",
    ".",
    "a/b0000.parquet",
    "a\\b",
    "a?b#c",
    "a\nb",
    'Fi"nanz.Rech"nungen',
]


def policy_names() -> set[str]:
    root = Path(__file__).parents[2]
    names: set[str] = set()
    for path in [root / "include" / "lethe" / "policy" / "reskill.yaml", *root.glob("examples/**/*.yaml")]:
        loaded = yaml.safe_load(path.read_text())
        if isinstance(loaded, dict) and isinstance(loaded.get("tables"), dict):
            names |= set(loaded["tables"])
    return names


@pytest.mark.parametrize("name", ["accounts", "public.users", "Shop.Kunden", "Buch.Haltung.Rechnungen", "a-b_c.D9"])
def test_a_plain_name_is_its_own_key_part(name: str) -> None:
    assert layout.key_part(name) == name
    assert layout.object_key(SID, name, 3) == f"snapshots/{SID}/data/{name}/b0003.parquet"
    assert digest_state.key(SID, name) == f"snapshots/{SID}/digests/{name}.parquet"


def test_the_shipped_policies_keep_their_keys() -> None:
    names = policy_names()
    assert len(names) > 10
    assert {n for n in names if layout.key_part(n) != n} == set()


def test_every_name_is_one_segment_of_its_own() -> None:
    parts = {name: layout.key_part(name) for name in ODD}
    assert len(set(parts.values())) == len(ODD), parts  # no two names alike
    for name, part in parts.items():
        assert part.isascii() and part.isprintable() and "/" not in part and " " not in part, (name, part)
        assert part.strip(".") != "", (name, part)  # not `.` or `..`: no segment a path would resolve
        key = layout.object_key(SID, name, None)
        assert key == f"snapshots/{SID}/data/{part}/unbucketed.parquet"
        assert layout.written_by(key) == SID
    # no name's objects lie under another's folder (`a` and `a/b`, `a` and `a/`)
    folders = [f"snapshots/{SID}/data/{p}/" for p in parts.values()]
    assert not [(x, y) for x in folders for y in folders if x != y and y.startswith(x)]
