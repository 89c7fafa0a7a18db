"""Hostile trees (issue #6): awkward names, deep nesting, empty files and a file over the single-PUT limit.

Most other bad input is covered where its behaviour lives: a missing, non-directory or unreadable source and
a missing bucket in test_run.py (exit 2), unreadable entries via setpriv in test_run.py, vanished files in
test_walk.py and test_worker.py, symlink loops in test_walk.py, invalid flags in test_cli.py and
test_properties.py.
"""

import os
import shutil
import unicodedata
import urllib.parse

import pytest

from obsbatch import keys
from tests.conftest import age, make_tree, objects, run_obsbatch, server_args

GiB = 1024 ** 3


def test_awkward_names_land_under_keys_that_keep_their_bytes(tmp_path, s3, s3server, prefix, proxy):
    cafe_nfc, cafe_nfd = unicodedata.normalize("NFC", "café.txt"), unicodedata.normalize("NFD", "café.txt")
    assert cafe_nfc != cafe_nfd
    names = {
        "a" * 251 + ".txt": b"longest ascii name (255 bytes)",
        "ж" * 124 + "end.txt": b"longest name of two-byte characters (255 bytes)",
        "line\nbreak.txt": b"a newline in the name",
        "  spaced  name .txt": b"spaces, leading and inner",
        "-rf": b"a leading dash",
        "--help.txt": b"two leading dashes",
        "tab\there.txt": b"a tab",
        "quote'\"<&>.txt": b"quotes and XML specials",
        "100%25 literal.txt": b"a literal percent sequence (its key: 100%2525 literal.txt)",
        "?#[]{}=+;,.txt": b"URL specials",
        cafe_nfc: b"NFC spelling",
        cafe_nfd: b"NFD spelling",
        "empty.txt": b"",
    }
    for name in names:
        assert len(name.encode()) <= 255, name
    files = make_tree(tmp_path, names)
    result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix, proxy.endpoint), env=s3server.env())
    assert result.returncode == 0, result
    assert result.summary["uploaded"] == len(names) and "Traceback" not in result.stderr
    # Both spellings of café are two files, two keys, two objects: no Unicode normalization anywhere.
    assert objects(s3, s3server.bucket, prefix) == {keys.encode(name.encode()): data for name, data in files.items()}
    # And on the wire each key is exactly the name's UTF-8 bytes, percent-encoded; only the literal "%25"
    # became "%2525" and the control characters their escapes (README "Keys"; issue #19: moto refuses a
    # newline), everything else is the name itself.
    sent = {urllib.parse.unquote(path.split("?")[0].split(f"/{prefix}", 1)[1])
            for method, path, _, _ in proxy.seen if method == "PUT" and f"/{prefix}" in path}
    renamed = {"100%25 literal.txt": "100%2525 literal.txt", "line\nbreak.txt": "line%0Abreak.txt",
               "tab\there.txt": "tab%09here.txt"}
    assert sent == {renamed.get(name, name) for name in names}


def test_a_backslash_is_part_of_the_name_not_a_separator(tmp_path, s3, s3server, prefix, proxy):
    """SeaweedFS stores a key's `\\` as `/` (issue #19): a file `x\\y` and a file `y` in a directory `x`
    shared one object. The key escapes it (`%5C`, itself `%255C` on the wire), so both are stored."""
    make_tree(tmp_path, {"back\\slash.txt": b"one file", "back/slash.txt": b"another file"})
    result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix, proxy.endpoint), env=s3server.env())
    assert result.returncode == 0 and result.summary["uploaded"] == 2, result
    puts = sorted(path.split("?")[0] for method, path, _, _ in proxy.seen if method == "PUT" and f"/{prefix}" in path)
    assert puts == [f"/{s3server.bucket}/{prefix}back%255Cslash.txt", f"/{s3server.bucket}/{prefix}back/slash.txt"], puts
    assert objects(s3, s3server.bucket, prefix) == {"back%5Cslash.txt": b"one file", "back/slash.txt": b"another file"}


def test_a_tree_100_levels_deep_with_empty_files_at_every_level(tmp_path, s3, s3server, prefix):
    files = {}
    rel = ""
    for level in range(100):
        rel += f"l{level:02d}/"
        files[rel + "empty"] = b""
        if level % 10 == 9:
            files[rel + "data.bin"] = os.urandom(100)
    make_tree(tmp_path, files)
    result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix), env=s3server.env())
    assert result.returncode == 0, result
    assert result.summary["uploaded"] == len(files) == 110
    assert objects(s3, s3server.bucket, prefix) == files


@pytest.mark.slow
def test_a_file_over_5_gib_goes_multipart(tmp_path, s3, s3server, prefix):
    size = 5 * GiB + 1  # one byte over the single-PUT limit
    need = size + 2 * GiB  # the server stores it all (sparse here, not there), plus room to spare
    if shutil.disk_usage(s3server.workdir).free < need:
        pytest.skip(f"needs {need / GiB:.0f} GiB free where SeaweedFS keeps its data")
    path = tmp_path / "huge.img"
    with open(path, "wb") as f:  # sparse: a few bytes of data, the rest holes that read as zeros
        f.write(b"start")
        f.seek(size - 3)
        f.write(b"end")
    age(path)
    key = f"{prefix}huge.img"
    try:
        # The largest threshold allowed, so only the size could make it multipart; 1 GiB parts.
        result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix), "--multipart-threshold", "5GiB",
                              "--multipart-chunksize", "1GiB", "--max-concurrent", 2, env=s3server.env(),
                              timeout=900)
        assert result.returncode == 0, result
        head = s3.head_object(Bucket=s3server.bucket, Key=key)
        assert head["ContentLength"] == size
        assert head["ETag"].strip('"').endswith("-6")  # six parts: five of 1 GiB and one of 1 byte
        start = s3.get_object(Bucket=s3server.bucket, Key=key, Range="bytes=0-4")["Body"].read()
        end = s3.get_object(Bucket=s3server.bucket, Key=key, Range=f"bytes={size - 3}-{size - 1}")["Body"].read()
        assert (start, end) == (b"start", b"end")
    finally:
        s3.delete_object(Bucket=s3server.bucket, Key=key)


def test_names_that_spell_each_others_escapes_never_share_a_key(tmp_path, s3, s3server, prefix):
    """Issue #11, defect 1: `caf\\xe9.txt` (not UTF-8) and `caf%E9.txt` (valid) both went to the key
    `caf%E9.txt`; both were reported uploaded and the bucket held one of them."""
    names = {
        b"caf\xe9.txt": b"a Latin-1 name",
        b"caf%E9.txt": b"a valid name that spells the escape",
        b"caf%e9.txt": b"the same in lower case",
        b"caf%25E9.txt": b"the escape of the escape",
        b"100% done.txt": b"a percent sign before no hex digits",
    }
    for name, data in names.items():
        with open(os.path.join(os.fsencode(tmp_path), name), "wb") as f:
            f.write(data)
        age(os.path.join(os.fsencode(tmp_path), name))
    result = run_obsbatch("--source", tmp_path, *server_args(s3server, prefix), env=s3server.env())
    assert result.returncode == 0, result
    assert result.summary["uploaded"] == len(names)
    # Five names, five objects. A `%` that two hex digits follow is written `%25`; a byte that is not UTF-8
    # `%XX`; anything else as it is (README "Keys").
    assert objects(s3, s3server.bucket, prefix) == {
        "caf%E9.txt": b"a Latin-1 name",
        "caf%25E9.txt": b"a valid name that spells the escape",
        "caf%25e9.txt": b"the same in lower case",
        "caf%2525E9.txt": b"the escape of the escape",
        "100% done.txt": b"a percent sign before no hex digits",
    }
