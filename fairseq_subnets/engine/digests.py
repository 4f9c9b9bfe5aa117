"""Content digests that make up a cell's cache key (standard library only).

A file's digest is the sha256 of its whole content, so a rebuilt file with the same bytes keeps
the digest and one with new bytes never does (sizes and modification times would also change on
an identical rebuild, and miss an edit within the same second). Within one process the digest is
remembered per (path, size, mtime in ns), so a large pretrained checkpoint read by many cells is
hashed once per run.
"""
import hashlib
import json
import os
import threading

CHUNK_BYTES = 1 << 20

_known = {}
_known_lock = threading.Lock()


def file_digest(path) -> str:
    """`sha256:<hex>` of the file's content; FileNotFoundError names the path when it is missing."""
    path = os.path.abspath(path)
    status = os.stat(path)
    stamp = (path, status.st_size, status.st_mtime_ns)
    with _known_lock:
        if stamp in _known:
            return _known[stamp]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    value = f"sha256:{digest.hexdigest()}"
    with _known_lock:
        _known[stamp] = value
    return value


def value_digest(value) -> str:
    """`sha256:<hex>` of a JSON value written canonically (sorted keys, no spaces), so equal
    configurations give equal digests whatever their key order."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return f"sha256:{hashlib.sha256(text.encode('utf-8')).hexdigest()}"
