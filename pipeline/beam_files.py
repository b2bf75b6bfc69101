"""Files that Beam workers read and write themselves, at a local path or at a URL (s3://, gs://, ...).

The data stages write every output file from their own DoFns (pipeline/beam_portable.py), so on
a remote root each worker writes straight into the execution's prefix on the object store,
whichever machine it runs on, and nothing passes through the submitting machine's disk. This is
the one module that touches those files, through Beam's own filesystems:

- A local path goes through `FileSystems` as before (a whole file is written to `<path>.writing`
  and renamed, so a reader never sees part of it).
- `s3://` goes through Beam's S3 IO (`apache_beam.io.aws`, on boto3: the `apache-beam[aws]`
  extra), with one client per thread and AWS environment. Beam's S3FileSystem builds a new boto3
  session and client for every call (0.43 s each here, against 8 ms for a call on a kept client),
  and its writer cannot make an empty object (S3 refuses a multipart upload of no parts), so an
  empty file is one `put_object`. An object appears whole when its upload completes, so there is
  no `.writing` name: the execution's `_COMPLETE.json`, written by the runner last
  (pipeline/filesystem.py), is what makes the files an artifact.
- Any other URL goes through `FileSystems`.

Endpoint and credentials come from boto3's own chain only: AWS_ENDPOINT_URL (or
AWS_ENDPOINT_URL_S3), AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN,
AWS_DEFAULT_REGION, AWS_PROFILE and the ~/.aws/ files, the same as s3fs reads for the rest of the
root. No `--s3_*` pipeline option is passed, and `pipeline_config.json` may not set one (the
runner refuses them, pipeline/filesystem.py): a secret there would be recorded with the run. A
cluster worker therefore needs those variables (or files) in its own environment.

Beam's DaskRunner gives its workers no pipeline options at all, and Beam's S3 and GCS
filesystems refuse to start without them; `FileSystems` calls here first give a worker empty
options, which leave every setting to the environment.
"""
from __future__ import annotations

import fnmatch
import os
import re
import shutil
import threading
from typing import BinaryIO, Sequence

from apache_beam.io.filesystem import CompressedFile, CompressionTypes
from apache_beam.io.filesystems import FileSystems

_COPY_CHUNK = 8 << 20
_clients = threading.local()


def scheme(path: str) -> str | None:
    """`s3` for `s3://bucket/key`; None for a local path (file:// counts as local)."""
    found = FileSystems.get_scheme(str(path))
    return None if found in (None, "file") else found


def is_url(path: str) -> bool:
    return scheme(path) is not None


def join(base: str, *parts: str) -> str:
    """`base/part/...`: with `/` for a URL, os.path.join for a local path (kept relative if it was)."""
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return os.path.join(str(base), *parts)


def _with_environment_options() -> None:
    """Empty pipeline options where a worker has none (Beam's DaskRunner): every setting from the environment."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.options.value_provider import RuntimeValueProvider

    if FileSystems._pipeline_options is None and RuntimeValueProvider.runtime_options is None:
        FileSystems.set_options(PipelineOptions([]))


def _aws_environment() -> tuple:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))


def _s3():
    """Beam's S3 IO for this thread, made again when the AWS environment changed (a test's new endpoint)."""
    environment = _aws_environment()
    kept = getattr(_clients, "s3", None)
    if kept is None or kept[0] != environment:
        from apache_beam.io.aws import s3io
        from apache_beam.options.pipeline_options import PipelineOptions

        kept = _clients.s3 = (environment, s3io.S3IO(options=PipelineOptions([])))
    return kept[1]


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------
def open_read(path: str, compression: str = CompressionTypes.UNCOMPRESSED) -> BinaryIO:
    """A binary reader of `path`, decompressed as `compression` says (CompressionTypes.GZIP, ...)."""
    if scheme(path) == "s3":
        raw = _s3().open(path, "rb")
        return raw if compression == CompressionTypes.UNCOMPRESSED else CompressedFile(raw, compression_type=compression)
    if is_url(path):
        _with_environment_options()
    return FileSystems.open(path, compression_type=compression)


def read_bytes(path: str) -> bytes:
    with open_read(path) as handle:
        return handle.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def exists(path: str) -> bool:
    if scheme(path) == "s3":
        return _s3().exists(path)
    if is_url(path):
        _with_environment_options()
    return FileSystems.exists(path)


def match(pattern: str) -> list[str]:
    """The paths a glob (`*`, `?`, `[...]` in the last part) matches, sorted; none is an empty list."""
    if scheme(pattern) == "s3":
        prefix = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
        return sorted(path for path, _ in _s3().list_files(prefix) if fnmatch.fnmatchcase(path, pattern))
    if is_url(pattern):
        _with_environment_options()
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------
def _put_empty_s3_object(path: str) -> None:
    from apache_beam.io.aws.s3io import parse_s3_path

    bucket, key = parse_s3_path(path)
    _s3().client.client.put_object(Bucket=bucket, Key=key, Body=b"")


def write_bytes(path: str, data: bytes, mime_type: str = "application/octet-stream") -> None:
    """`data` as the whole file at `path`; a reader never sees part of it (see the module docstring)."""
    if not is_url(path):
        temporary = path + ".writing"
        with FileSystems.create(temporary, mime_type=mime_type,
                                compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            handle.write(data)
        FileSystems.rename([temporary], [path])
        return
    if scheme(path) == "s3":
        if not data:
            _put_empty_s3_object(path)
            return
        with _s3().open(path, "wb", mime_type=mime_type) as handle:
            handle.write(data)
        return
    _with_environment_options()
    with FileSystems.create(path, mime_type=mime_type, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(data)


def upload_file(local_file: str, path: str) -> None:
    """A local file's bytes as the object at URL `path`, streamed in chunks (a shard written by TensorFlow,
    which cannot open s3:// itself)."""
    if not is_url(path):
        raise ValueError(f"upload_file: expected a URL to write, got the local path {path!r}")
    if os.path.getsize(local_file) == 0:
        write_bytes(path, b"")
        return
    if scheme(path) == "s3":
        target = _s3().open(path, "wb")
    else:
        _with_environment_options()
        target = FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)
    with open(local_file, "rb") as source, target:
        shutil.copyfileobj(source, target, _COPY_CHUNK)


def copy(sources: Sequence[str], destinations: Sequence[str]) -> None:
    """Copy files (server-side between two URLs of one object store)."""
    if not sources:
        return
    if any(is_url(p) for p in (*sources, *destinations)):
        _with_environment_options()
    if all(scheme(p) == "s3" for p in (*sources, *destinations)):
        for source, destination in zip(sources, destinations):
            _s3().copy(source, destination)
        return
    FileSystems.copy(list(sources), list(destinations))
