"""The snapshot format (obsbatch.snapshot): ids, times, the record's seal, and packs read back exactly or
refused when altered."""

from __future__ import annotations

import hashlib
import io
import json

import pytest

from obsbatch import snapshot


def test_ids_sort_by_time_and_name_only_records():
    early, late = snapshot.new_id(1_700_000_000.25), snapshot.new_id(1_700_000_001)
    assert early < late and early.startswith("20231114T221320.250Z-") and late.startswith("20231114T221321.000Z-")
    # Runs within one second still sort by time (two of them on one prefix: "the latest" must be the later).
    assert snapshot.new_id(1_700_000_000.2) < snapshot.new_id(1_700_000_000.3)
    assert snapshot.id_of(f"p.obsbatch/snapshots/{early}.json") == early
    assert snapshot.id_of(f"p.obsbatch/snapshots/{early}.json.sig") is None
    assert snapshot.id_of("p.obsbatch/snapshots/packs/whatever") is None
    assert snapshot.area("daily/") == "daily.obsbatch/snapshots/" and snapshot.area("") == ".obsbatch/snapshots/"


@pytest.mark.parametrize("text, expected", [
    # A time to the second is the end of that second (the time `snapshots` shows finds that snapshot).
    ("2026-12-01T23:00:00Z", 1796166000.999999),
    ("2026-12-02T02:00:00+03:00", 1796166000.999999),
    ("2026-12-01T23:00:00.250Z", 1796166000.25),
    ("2026-12-01T23:00:00.000Z", 1796166000.0),
    ("2026-12-01", 1796169599.999999),
])
def test_as_of_takes_rfc_3339_or_a_date(text, expected):
    assert snapshot.parse_time(text) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("text", ["yesterday", "2026-12-01T23:00:00", "2026-13-01"])
def test_as_of_refuses_what_is_not_a_time_with_its_zone(text):
    with pytest.raises(ValueError, match="RFC 3339|time zone"):
        snapshot.parse_time(text)


def test_a_sealed_record_detects_any_change():
    record = snapshot.seal({"id": "x", "files": 3, "previous": None})
    assert snapshot.sealed(record)
    assert not snapshot.sealed(dict(record, files=4))
    assert not snapshot.sealed({k: v for k, v in record.items() if k != "head"})


def test_a_pack_reads_back_every_tree_and_refuses_an_altered_one():
    pack = snapshot.PackWriter()
    trees = {}
    for n in range(3):
        data = snapshot.tree_bytes([[f"name-{n}", "f", 0o644, 0, 0, n, n, "sha", "", "", 0]])
        digest = hashlib.sha256(data).hexdigest()
        trees[digest] = data
        pack.add(digest, data)
    handle, md5_hex, sha256_hex = pack.finished()
    raw = handle.read()
    assert hashlib.md5(raw).hexdigest() == md5_hex and hashlib.sha256(raw).hexdigest() == sha256_hex
    loaded = snapshot.Trees()
    assert loaded.add_pack(io.BytesIO(raw)) == 3
    for digest, data in trees.items():
        assert snapshot.tree_bytes(loaded.get(digest)) == data
    altered = bytearray(raw)
    altered[-3] ^= 1
    broken = snapshot.Trees()
    broken.add_pack(io.BytesIO(bytes(altered)))
    with pytest.raises(snapshot.Damaged):
        for digest in trees:
            broken.get(digest)
    with pytest.raises(snapshot.Damaged, match="ends inside"):
        snapshot.Trees().add_pack(io.BytesIO(raw[:-1]))
    pack.close()


def test_an_entry_written_before_the_etag_field_reads_as_having_none():
    """Trees stored before issue #21 have 11 fields; their files are proven by a HEAD, not by the listing."""
    older = ["name", snapshot.FILE, 0o644, 0, 0, 1, 3, "sha", "", "", 0]
    assert snapshot.etag(older) == ""
    assert snapshot.etag(older + ["0cc175b9c0f1b6a831c399e269772661"]) == "0cc175b9c0f1b6a831c399e269772661"


def test_a_fleet_marker_is_one_key_per_host_and_prefix_whatever_the_prefix_holds():
    keys = {snapshot.fleet_key("web-01", prefix) for prefix in ("", "daily/", "daily/x/", "daily%2Fx/", "a b/")}
    assert len(keys) == 5 and all(key.startswith(".obsbatch/fleet/web-01/") and key.count("/") == 3 for key in keys)
    assert snapshot.fleet_key("web-01", "daily/x/") == ".obsbatch/fleet/web-01/daily%2Fx%2F.json"
    record = {"host": "web-01", "prefix": "daily/", "id": "x", "time": "t", "files": 1, "bytes": 2, "unstored": 0,
              "exit_code": 0, "head": "h", "root": "not copied", "packs": ["nor this"]}
    assert json.loads(snapshot.fleet_marker(record)) == {k: v for k, v in record.items() if k not in ("root", "packs")}
