"""An Examples artifact at a location that Beam's filesystems open: a local directory or a URL.

ingest and augment write (and augment reads) Examples from their Beam workers, straight under an
execution's prefix on a remote root (`s3://bucket/prefix/ingest/7/examples`), as well as in a
local directory. These are files.py's `shard_files` and `read_schema` for such a location,
through pipeline/beam_files.py; on a local directory they give what files.py gives.
"""
from __future__ import annotations

import json

from components.examples.files import read_schema as read_local_schema, shard_files as local_shard_files
from components.examples.keys import SCHEMA_FILE, SHARD_SUFFIX
from pipeline import beam_files


def join(location: str, *parts: str) -> str:
    return beam_files.join(str(location), *parts)


def shard_paths(location: str, split: str) -> list[str]:
    """The split's shard files, sorted (`<location>/<split>/data-*.tfrecord.gz`)."""
    if not beam_files.is_url(location):
        return local_shard_files(location, split)
    return beam_files.match(join(location, split, f"data-*{SHARD_SUFFIX}"))


def read_text(location: str, name: str) -> str:
    return beam_files.read_text(join(location, name))


def read_schema(location: str) -> dict:
    if not beam_files.is_url(location):
        return read_local_schema(location)
    try:
        return json.loads(read_text(location, SCHEMA_FILE))
    except (FileNotFoundError, OSError) as exc:
        raise FileNotFoundError(f"{join(location, SCHEMA_FILE)}: Examples artifact has no {SCHEMA_FILE} "
                                f"({type(exc).__name__}: {exc})") from None
