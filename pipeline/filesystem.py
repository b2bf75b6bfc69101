"""An artifact root that is a URL (`s3://bucket/prefix`, any fsspec filesystem) instead of a local directory.

Stages keep working on local paths: TensorFlow 2.21 no longer opens `s3://` itself (its S3 and GCS
filesystems moved to tensorflow-io), and Keras, TensorBoard and Beam's DirectRunner all write
local files fastest. So a remote root has a local working copy, `<cache>/<sha256(url)[:16]>/`
(`$CONVPIPE_CACHE`, default `~/.cache/convpipe`), laid out exactly as a local root, and this module
moves whole execution directories between the two:

    publish   after an executor returns, its `<stage>/<execution_id>/` is uploaded and then ONE
              object, `<stage>/<execution_id>/_COMPLETE.json` (the outputs' fingerprints), is
              written last. Readers require it: an upload cut short (a killed run, an S3 server
              that went away) is never taken for an artifact, and the next run removes it.
    fetch     before an executor runs, each input whose execution directory is not in the local
              copy (or whose local marker differs from the remote one) is downloaded into a
              temporary sibling and renamed into place: another machine's outputs stream in once
              and are reused from the local copy after that.
    receive   a stage that writes URLs itself (ingest and augment: their Beam workers write the
              shards and text files straight under `<url>/<stage>/<execution_id>/<output>/`,
              pipeline/beam_files.py) gets no fetch and no upload: when it returns, its outputs
              are downloaded once into the local copy, fingerprinted there (the fingerprint is a
              hash over every file's bytes, pipeline/artifacts.py, so it needs them), and then
              only the marker is written. That download is also the local copy that validate and
              train read on this machine, so no shard crosses the network twice.

Credentials and the endpoint come from the usual AWS variables and files (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ~/.aws/config), through s3fs and botocore here and
through boto3 in Beam's S3 filesystem; never from pipeline_config.json (`beam_s3_flags` finds the
`--s3_*` Beam options that would carry them there, which the runner refuses). `check()` reaches
the bucket before any work and turns a bad bucket, a wrong endpoint or missing credentials into
one line that names the URL.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Optional

MARKER = "_COMPLETE.json"
log = logging.getLogger("convpipe.filesystem")


class RootError(RuntimeError):
    """A remote root cannot be used; one line naming its URL and why."""


AWS_ENVIRONMENT = "AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_PROFILE, ~/.aws/"
"""Where the S3 endpoint and credentials come from, for s3fs and Beam's S3 filesystem alike."""


def beam_s3_flags(args) -> list[str]:
    """The `--s3_*` flags among Beam options (S3Options: endpoint, keys, region, ...): settings that
    belong in the AWS environment, not in the config that the lineage store records."""
    return [str(arg).split("=", 1)[0] for arg in args if str(arg).startswith("--s3_")]


def is_url(text: str | os.PathLike | None) -> bool:
    """True for `scheme://...` other than file:// (a local path, relative or absolute, is not a URL)."""
    if text is None:
        return False
    text = str(text)
    return "://" in text and not text.startswith("file://")


def root_label(root: str | os.PathLike) -> str:
    """How a root is named in the metadata store and in exported models: its URL, or its resolved path."""
    return str(root).rstrip("/") if is_url(root) else str(Path(root).resolve())


def _start_io_thread() -> None:
    """Start fsspec's event-loop thread with SIGINT and SIGTERM blocked in it.

    Signals sent to the process go to any thread that does not block them. Were they delivered to
    fsspec's IO thread, the main thread (which turns SIGTERM into `Interrupted`, and SIGINT into
    KeyboardInterrupt) would sleep on in whatever it waits for. A thread inherits its creator's mask.
    """
    import signal
    import threading

    import fsspec.asyn

    if fsspec.asyn.iothread[0] is not None or threading.current_thread() is not threading.main_thread():
        fsspec.asyn.get_loop()
        return
    blocked = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        fsspec.asyn.get_loop()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def cache_root() -> Path:
    return Path(os.environ.get("CONVPIPE_CACHE") or Path.home() / ".cache" / "convpipe")


def _reason(exc: BaseException) -> str:
    """The one line worth printing from an s3fs / botocore / aiohttp error."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "NoCredentials" in name or "Unable to locate credentials" in text:
        return ("no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "or a profile in ~/.aws/credentials)")
    if isinstance(exc, FileNotFoundError) or "NoSuchBucket" in text:
        return "the bucket does not exist"
    if isinstance(exc, PermissionError) or "AccessDenied" in text or "InvalidAccessKeyId" in text \
            or "SignatureDoesNotMatch" in text:
        return f"access denied ({text or name})"
    if "Connect" in name or "connect" in text.lower() or "Endpoint" in name:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "the default AWS endpoint"
        return f"cannot reach the S3 endpoint {endpoint} ({text or name})"
    return f"{name}: {text}" if text else name


class RemoteRoot:
    """One remote root and its local working copy."""

    def __init__(self, url: str, cache: Optional[Path] = None):
        import fsspec

        self.url = url.rstrip("/")
        protocol = self.url.split("://", 1)[0]
        options = {}
        if protocol in ("s3", "s3a"):
            # Fail within seconds on a wrong endpoint instead of retrying for minutes.
            options = {"config_kwargs": {"connect_timeout": 5, "read_timeout": 60,
                                                       "retries": {"max_attempts": 2}}}
        _start_io_thread()
        try:
            self.fs, self.path = fsspec.core.url_to_fs(self.url, **options)
        except (ImportError, ValueError) as exc:
            raise RootError(f"--root {self.url}: {exc}") from None
        self.path = self.path.rstrip("/")
        self.local = Path(cache or cache_root()) / hashlib.sha256(self.url.encode()).hexdigest()[:16]
        self._complete: dict[str, str] = {}
        """rel -> marker text, for markers seen during this process (a marker never changes once written)."""

    def __repr__(self) -> str:
        return f"RemoteRoot({self.url!r}, local={str(self.local)!r})"

    def remote(self, rel: str) -> str:
        return f"{self.path}/{rel}" if rel else self.path

    def url_of(self, rel: str) -> str:
        """The full URL of `rel` (`s3://bucket/prefix/<rel>`), as Beam's filesystems open it."""
        return f"{self.url}/{rel}" if rel else self.url

    def artifact_url(self, artifact) -> str:
        """The URL of an artifact on the root (`<url>/<stage>/<execution_id>/<output>`)."""
        return self.url_of(Path(artifact.uri).relative_to(self.local).as_posix())

    def check(self) -> None:
        """Reach the root now (list it, write and remove a probe object): every problem is one line naming the URL."""
        probe = self.remote(f".convpipe-probe-{uuid.uuid4().hex[:8]}")
        try:
            bucket = self.path.split("/", 1)[0]
            self.fs.info(bucket)  # raises (unlike exists) what went wrong
            self.fs.pipe_file(probe, b"")
            self.fs.rm_file(probe)
        except Exception as exc:  # s3fs raises botocore, aiohttp and OS errors alike
            raise RootError(f"artifact root {self.url}: {_reason(exc)}") from None
        self.local.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------- publishing
    def publish(self, local_dir: Path, rel: str, fingerprints: dict[str, str], uploaded: bool = False) -> None:
        """Upload one execution directory, then write its marker: the last object, which readers require.
        `uploaded`: its files are on the root already (written there by the stage, see `receive`): only the marker."""
        marker = json.dumps({"fingerprints": fingerprints}, sort_keys=True)
        files = [] if uploaded else sorted(p for p in Path(local_dir).rglob("*") if p.is_file())
        try:
            for file in files:
                self.fs.put_file(str(file), self.remote(f"{rel}/{file.relative_to(local_dir).as_posix()}"))
            self.fs.pipe_file(self.remote(f"{rel}/{MARKER}"), marker.encode())
        except Exception as exc:
            raise RootError(f"artifact root {self.url}: publishing {rel} failed: {_reason(exc)}") from exc
        (Path(local_dir) / MARKER).write_text(marker)
        self._complete[rel] = marker

    def receive(self, rel: str, local_dir: Path) -> int:
        """Download what a stage wrote under `rel` on the root into the empty `local_dir`; returns the bytes.

        Every object under the prefix, as it is: the stage's workers wrote them there directly, and
        the fingerprint taken of this copy must be the one of the files on the root."""
        local_dir = Path(local_dir)
        prefix = self.remote(rel)
        try:
            self.fs.invalidate_cache(prefix)  # the objects were written by boto3, behind s3fs's listing cache
            listing = self.fs.find(prefix, detail=True)
            remote_files = sorted(listing)
            targets = [str(local_dir / name[len(prefix) + 1:]) for name in remote_files]
            for target in targets:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
            if remote_files:
                self.fs.get(remote_files, targets)
        except Exception as exc:
            raise RootError(f"artifact root {self.url}: downloading {rel}, written by the stage, failed: "
                            f"{_reason(exc)}") from exc
        return sum(int(listing[name].get("size") or 0) for name in remote_files)

    def put_tree(self, local_dir: Path, rel: str) -> None:
        """Copy a directory whose readers need no marker (TensorBoard logs, run logs): files overwrite."""
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            return
        for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            self.fs.put_file(str(file), self.remote(f"{rel}/{file.relative_to(local_dir).as_posix()}"))

    def get_tree(self, rel: str) -> Path:
        """Copy a plain remote directory (TensorBoard logs) into the local copy, file by file; returns it."""
        target = self.local / rel
        try:
            remote_files = self.fs.find(self.remote(rel))
        except FileNotFoundError:
            remote_files = []
        for remote_file in remote_files:
            local_file = target / remote_file[len(self.remote(rel)) + 1:]
            local_file.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(remote_file, str(local_file))
        target.mkdir(parents=True, exist_ok=True)
        return target

    def marker(self, rel: str) -> Optional[str]:
        """The remote marker of `rel`, or None: the execution directory is not (or not wholly) there."""
        if rel in self._complete:
            return self._complete[rel]
        try:
            text = self.fs.cat_file(self.remote(f"{rel}/{MARKER}")).decode()
        except FileNotFoundError:
            return None
        self._complete[rel] = text
        return text

    def is_complete(self, rel: str) -> bool:
        return self.marker(rel) is not None

    def fetch(self, rel: str) -> Path:
        """The local copy of a published execution directory, downloading it when missing or different."""
        target = self.local / rel
        marker = self.marker(rel)
        if marker is None:
            raise RootError(f"artifact root {self.url}: {rel} has no {MARKER}; it was never wholly published")
        local_marker = target / MARKER
        if local_marker.is_file() and local_marker.read_text() == marker:
            return target
        tmp = target.with_name(f".fetch-{target.name}-{uuid.uuid4().hex[:8]}")
        try:
            self.fs.get(self.remote(rel) + "/", str(tmp) + "/", recursive=True)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RootError(f"artifact root {self.url}: downloading {rel} failed: {_reason(exc)}") from exc
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, target)
        return target

    def remove(self, rel: str) -> None:
        """Delete a remote execution directory (a failed or abandoned one); a missing one is fine."""
        self._complete.pop(rel, None)
        try:
            self.fs.invalidate_cache(self.remote(rel))  # a stage's workers may have written there (boto3)
            if self.fs.exists(self.remote(rel)):
                self.fs.rm(self.remote(rel), recursive=True)
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------- the runner's artifacts
    def execution_of(self, artifact) -> str:
        """`<stage>/<execution_id>` of an artifact (its directory under the local copy, less the output name)."""
        return "/".join(Path(artifact.uri).relative_to(self.local).parts[:2])

    def has_artifact(self, artifact) -> bool:
        """Whether the artifact's execution is complete on the remote root (its marker is there)."""
        return self.is_complete(self.execution_of(artifact))

    def fetch_artifacts(self, artifacts) -> None:
        """Bring the executions of `artifacts` into the local copy (each once)."""
        for rel in dict.fromkeys(self.execution_of(a) for a in artifacts):
            self.fetch(rel)

    def remove_execution(self, stage: str, execution_id: int) -> None:
        """Remove a failed or abandoned execution's upload; when the store is down, leave it: it has no
        marker, so no reader ever takes it."""
        try:
            self.remove(f"{stage}/{execution_id}")
        except Exception as exc:
            log.warning("could not remove %s/%s/%d from the remote root (%s); it has no %s and is never read",
                        self.url, stage, execution_id, exc, MARKER)

    def copy_logs(self, names) -> None:
        """Run logs and TensorBoard logs to the remote root (plain copies: their readers need no marker)."""
        for name in names:
            try:
                self.put_tree(self.local / name, name)
            except Exception as exc:
                log.warning("could not copy %s to %s (%s)", self.local / name, self.url, exc)


# ---------------------------------------------------------------------------- served models
SAVED_MODEL_FILE = "saved_model.pb"

def _fs(url: str):
    import fsspec

    _start_io_thread()
    options = {"config_kwargs": {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2}}} \
        if url.startswith(("s3://", "s3a://")) else {}
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path.rstrip("/")


def url_fs(url: str):
    """(fsspec filesystem, path) of any URL, as this module opens them: short S3 timeouts, and an IO
    thread that leaves SIGINT and SIGTERM to the main thread (training's backup mirror uses it too)."""
    return _fs(url)


def serving_mirror(model_url: str) -> Path:
    """Where the versions of a remote `<serving_root>/<model_name>` are mirrored on this machine."""
    return cache_root() / "serving" / hashlib.sha256(model_url.rstrip("/").encode()).hexdigest()[:16]


def remote_versions(model_url: str) -> list[int]:
    """Whole versions under a remote model directory: numeric prefixes that hold their saved_model.pb."""
    fs, path = _fs(model_url)
    try:
        children = fs.ls(path, detail=False, refresh=True)
    except FileNotFoundError:
        return []
    versions = []
    for child in children:
        name = child.rstrip("/").rsplit("/", 1)[-1]
        if name.isdigit() and fs.exists(f"{path}/{name}/{SAVED_MODEL_FILE}"):
            versions.append(int(name))
    return sorted(versions)


def _download_version(fs, path: str, mirror: Path, version: int) -> Path:
    """One whole remote version into the mirror (a temporary sibling renamed into place), once."""
    target = mirror / str(version)
    if (target / SAVED_MODEL_FILE).is_file():
        return target
    tmp = mirror / f".fetch-{version}-{uuid.uuid4().hex[:8]}"
    try:
        fs.get(f"{path}/{version}/", str(tmp) + "/", recursive=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    os.rename(tmp, target)
    return target


def sync_served(model_url: str) -> Path:
    """The local mirror of a remote model directory, with every whole version downloaded (once)."""
    fs, path = _fs(model_url)
    mirror = serving_mirror(model_url)
    mirror.mkdir(parents=True, exist_ok=True)
    try:
        wanted = remote_versions(model_url)
        for version in wanted:
            _download_version(fs, path, mirror, version)
    except Exception as exc:
        raise RootError(f"serving root {model_url}: {_reason(exc)}") from exc
    for stale in mirror.iterdir():  # a version removed from the bucket is not served any more
        if stale.name.isdigit() and int(stale.name) not in wanted:
            shutil.rmtree(stale, ignore_errors=True)
    return mirror


def served_version(model_url: str, version: Optional[int] = None) -> Path:
    """One whole version of a remote model (the latest when `version` is None), downloaded into the
    mirror if missing: what `convpipe predict --model s3://...` loads. FileNotFoundError names what exists."""
    try:
        fs, path = _fs(model_url)
        whole = remote_versions(model_url)
    except Exception as exc:
        raise RootError(f"serving root {model_url}: {_reason(exc)}") from exc
    if not whole:
        raise FileNotFoundError(f"{model_url}: expected numeric versions holding {SAVED_MODEL_FILE} "
                                "(TF Serving layout), found none")
    if version is not None and version not in whole:
        raise FileNotFoundError(f"{model_url}: version {version} not found (or not whole); versions present: {whole}")
    mirror = serving_mirror(model_url)
    mirror.mkdir(parents=True, exist_ok=True)
    try:
        return _download_version(fs, path, mirror, whole[-1] if version is None else version)
    except Exception as exc:
        raise RootError(f"serving root {model_url}: downloading version {version or whole[-1]} failed: "
                        f"{_reason(exc)}") from exc


def push_version(local_version: Path, model_url: str) -> tuple[int, str]:
    """Upload a checked SavedModel directory as the next version of a remote model: (version, URL).

    The number is claimed first (pipeline/version_claims.py: one conditional put of
    `<model>/.claims/<n>`, retried with n+1 when another exporter won it), so two exporters of one
    serving root never write into the same version. S3 has no rename, so a version cannot appear at
    once: its files are uploaded first and saved_model.pb, the file without which nothing loads it,
    last. `remote_versions` (our readers) counts only versions holding it; TF Serving's load of a
    version seen before it fails and is retried (`--max_num_load_retries`), so the version it
    serves is whole.
    """
    from pipeline.version_claims import ClaimError, claim_next_version

    fs, path = _fs(model_url)
    try:
        version = claim_next_version(fs, path)
    except ClaimError as exc:
        raise RootError(f"serving root {model_url}: {exc}") from None
    except Exception as exc:
        raise RootError(f"serving root {model_url}: claiming a version number failed: {_reason(exc)}") from exc
    target = f"{path}/{version}"
    local_version = Path(local_version)
    files = sorted((p for p in local_version.rglob("*") if p.is_file()), key=lambda p: p.name == SAVED_MODEL_FILE)
    try:
        for file in files:
            fs.put_file(str(file), f"{target}/{file.relative_to(local_version).as_posix()}")
    except Exception as exc:
        try:
            fs.rm(target, recursive=True)
        except Exception:
            pass  # without saved_model.pb it is never loaded; the claim keeps its number from being reused
        raise RootError(f"serving root {model_url}: uploading version {version} failed: {_reason(exc)}") from exc
    protocol = model_url.split("://", 1)[0]
    return version, f"{protocol}://{target}"
