"""Claiming the next TF Serving version number on an object store, atomically, for one exporter.

A local serving root takes its next version with one rename, which fails when another exporter
took the number first. S3 has no rename and no directories: two exporters that each list
`<model>/`, see versions 1..k and upload k+1 would write into the same prefix, file over file.
So before uploading, an exporter claims its number by creating ONE object,
`<model>/.claims/<version>`, with a conditional put (`If-None-Match: *`, which AWS S3 honours
since 2024 and moto's server mode does too): exactly one writer of that key succeeds, the others
get `412 PreconditionFailed` (s3fs: FileExistsError) and try the next number.

    <model>/.claims/<n>           who claimed n (host, pid, time): never removed, so n is never reused
    <model>/<n>/...               the version's files, uploaded by the claimant only
    <model>/<n>/saved_model.pb    uploaded last; readers (remote_versions, TF Serving) need it

A claim whose upload never finished (the exporter died) leaves a gap: the number stays taken, the
version is never whole, and nobody serves it. `.claims` is not numeric, so TF Serving ignores it.

A store that ignores the condition would let both puts succeed and the race would be back
unnoticed; so after each claim the same conditional put is sent once more, and must be refused.
When it is not, the claim fails with an error naming the URL (AWS S3 and moto 5.2's server, the
one the tests start, refuse it).
"""
from __future__ import annotations

import json
import os
import socket
import time

CLAIMS_DIR = ".claims"
MAX_TRIES = 100


class ClaimError(RuntimeError):
    """No version number could be claimed; the message says why (the caller names the URL)."""


def taken_numbers(fs, model_path: str) -> set[int]:
    """Every number in use under `model_path`: version prefixes (whole or not) and claims."""
    taken = set()
    for folder in (model_path, f"{model_path}/{CLAIMS_DIR}"):
        try:
            children = fs.ls(folder, detail=False, refresh=True)
        except FileNotFoundError:
            continue
        for child in children:
            name = child.rstrip("/").rsplit("/", 1)[-1]
            if name.isdigit():
                taken.add(int(name))
    return taken


def _claim_body() -> bytes:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                       "claimed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, sort_keys=True).encode()


def claim_next_version(fs, model_path: str) -> int:
    """Create `<model_path>/.claims/<n>` for the lowest n above every number in use; returns n."""
    body = _claim_body()
    number = max(taken_numbers(fs, model_path), default=0) + 1
    for _ in range(MAX_TRIES):
        key = f"{model_path}/{CLAIMS_DIR}/{number}"
        try:
            fs.pipe_file(key, body, mode="create")
        except FileExistsError:  # another exporter claimed it between our listing and our put
            number += 1
            continue
        try:
            fs.pipe_file(key, body, mode="create")
        except FileExistsError:
            return number  # the store refused a second create: the claim is ours alone
        raise ClaimError(f"the object store accepted a second conditional put (If-None-Match: *) of {key}, so it "
                         "cannot make a version claim atomic; use an S3 endpoint that implements conditional writes")
    raise ClaimError(f"no free version number after {MAX_TRIES} tries (last tried {number})")
