"""The team's shared render store: where a render paid for on one machine waits for the rest.

A remote is a bucket and prefix on object storage (`s3://`, `gs://`, `az://`) or a shared
folder (`file:///path`), named by the manifest's `remote`, overridden by `--remote` and
`KLING_BATCH_REMOTE` (`resolve_remote`). Its layout under the prefix (under `emulator/`
below it for emulator renders, which must never pass for paid ones):

    objects/sha256/<hex>              a render's bytes, by content (`object_key`)
    renders/<fingerprint hex>.json    what made it: request, job, hash and size, cost, when,
                                      by which run (`record_key`, `remote_files`)
    claims/<fingerprint hex>          which run is paying for it now (`claim_key`, `claims`)

`RemoteStore` is the one door to it: the few operations the rest needs, awaitable, on
obstore (the Python binding of Rust's object_store: one code path for S3, GCS, Azure and
local folders, conditional creates and updates, streaming multipart uploads). Why not
fsspec: a claim needs an atomic create-if-absent and a compare-and-swap, and fsspec offers
neither uniformly (no If-None-Match put in s3fs, no exclusive create for a local folder);
object_store has both on S3, GCS and Azure, and the create on a local folder, whose
compare-and-swap is made here under a file lock (on a network file system, as sound as its
locking; the create itself is a hard link, atomic there too).

Credentials come from each provider's own chain and are never passed, written or shown:
S3 through boto3 when it is installed and the environment holds no key (profiles, SSO,
instance roles), else object_store's own chain (environment, web identity, instance
roles); GCS and Azure through object_store's (environment, application default
credentials, managed identity, the Azure CLI). Every failure becomes one `RemoteError`
here, cut to one line, with URL queries (where a SAS token would be) and the values of
credential variables taken out.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import filelock

from kling_batch.canonical import tagged, untagged
from kling_batch.errors import BadOutput, RemoteError, UserError
from kling_batch.payloads import Download

if TYPE_CHECKING:
    from obstore import UpdateVersion
    from obstore.store import ObjectStore

T = TypeVar("T")
SCHEMES = ("s3", "gs", "az", "file")
ENV_VAR = "KLING_BATCH_REMOTE"
# Multipart part size: a file up to this size goes in one PUT, a larger one streams in
# parts, at most `_PARTS_IN_FLIGHT` at once, so an upload holds a few parts in memory.
CHUNK = 8 * 1024 * 1024
_PARTS_IN_FLIGHT = 2
_READ_CHUNK = 1024 * 1024
_THREADS = 16  # store calls at once (claims, records, pushes, restores)
# Claims and records are small JSON; anything bigger under their keys is not ours.
SMALL_LIMIT = 1024 * 1024
_HEX = re.compile(r"[0-9a-f]{64}")
_SECRET_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_TOKEN",
    "AZURE_CLIENT_SECRET",
)


@dataclass(frozen=True, slots=True)
class RemoteUrl:
    """A parsed remote: scheme, bucket (container; for `file://` the shared folder, which
    must exist) and prefix (a path below it)."""

    scheme: str
    bucket: str
    prefix: str = ""

    def __str__(self) -> str:
        below = f"/{self.prefix}" if self.prefix else ""
        if self.scheme == "file":
            return f"file://{self.bucket.rstrip('/')}{below}"
        return f"{self.scheme}://{self.bucket}{below}"

    @property
    def folder(self) -> Path:
        """Where a `file://` remote's objects are."""
        return Path(self.bucket, self.prefix)

    def below(self, name: str) -> RemoteUrl:
        """The same store, one folder further down (`emulator/` for emulator renders)."""
        return RemoteUrl(self.scheme, self.bucket, f"{self.prefix}/{name}".strip("/"))


def parse_remote(text: str, *, file: Path | str | None = None) -> RemoteUrl:
    """`s3://bucket/prefix`, `gs://…`, `az://container/prefix` or `file:///folder`.

    Refused (`UserError`, naming `file` and the field): another scheme, credentials or a
    query in the URL (credentials come from the provider's chain, never from a manifest),
    a `file://` path that is not absolute.
    """

    def refuse(why: str) -> UserError:
        return UserError(f"remote {text!r}: {why}", file=file, field="remote")

    parts = urlsplit(text.strip())
    if parts.scheme not in SCHEMES:
        raise refuse(f"use one of {', '.join(s + '://' for s in SCHEMES)}")
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise refuse(
            "credentials or options in the URL are refused; they come from the provider's "
            "environment or profile"
        )
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise refuse("a shared folder is named by its absolute path: file:///path/to/folder")
        return RemoteUrl("file", parts.path.rstrip("/") or "/")
    if not parts.netloc:
        raise refuse(f"name the bucket: {parts.scheme}://bucket/prefix")
    return RemoteUrl(parts.scheme, parts.netloc, parts.path.strip("/"))


def resolve_remote(
    configured: str | None, override: str | None, *, file: Path | str | None = None
) -> RemoteUrl | None:
    """The remote a command uses: `--remote` or `KLING_BATCH_REMOTE` (`override`) over the
    manifest's `remote`; an empty or `none` override turns the manifest's off."""
    if override is not None:
        text = override.strip()
        if text.lower() in ("", "none", "off"):
            return None
        return parse_remote(text, file=f"--remote / ${ENV_VAR}")
    if configured is None:
        return None
    return parse_remote(configured, file=file)


def object_key(sha256: str) -> str:
    """Where the render with this content hash lies."""
    return f"objects/sha256/{_hex(sha256)}"


def record_key(fingerprint: str) -> str:
    """Where the record of the render of this fingerprint lies."""
    return f"renders/{_hex(fingerprint)}.json"


def claim_key(fingerprint: str) -> str:
    """Where the claim on the render of this fingerprint lies."""
    return f"claims/{_hex(fingerprint)}"


def _hex(digest: str) -> str:
    """The bare hex of a `sha256:` digest; anything else (a hostile lockfile's `../x`) is
    refused before it can name a key."""
    bare = untagged(digest)
    if not _HEX.fullmatch(bare):
        raise RemoteError(f"not a sha256 digest: {digest[:80]!r}")
    return bare


def redact(text: str) -> str:
    """One line of a store's error, without URL queries or credential values."""
    stripped = text.strip()
    line = stripped.splitlines()[0] if stripped else ""
    line = re.sub(r"(https?://[^\s?#]+)[?#]\S*", r"\1", line)
    for name in _SECRET_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            line = line.replace(value, "***")
    return line[:300]


@dataclass(frozen=True, slots=True)
class Stored:
    """A small object read back: its bytes and its version token (for a conditional
    update; see `version_token`)."""

    data: bytes
    etag: str | None


class RemoteStore:
    """The operations kling-batch makes on a remote; every failure is a `RemoteError`.

    Each runs obstore's blocking call in a worker thread of its own limiter (so a store
    that hangs never takes the threads file operations need), not its asyncio API: the
    latter resolves futures from Rust threads that can outlive the interpreter, and a
    process exiting while one does aborts (a known race in pyo3-async-runtimes).
    """

    def __init__(self, url: RemoteUrl, meta: ObjectStore, data: ObjectStore) -> None:
        self.url = url
        self._meta = meta  # claims and records: short timeouts, few retries
        self._data = data  # render bytes: long transfers
        self._threads = anyio.CapacityLimiter(_THREADS)

    async def _call(self, what: str, key: str, call: Callable[[], T]) -> T:
        """`call()` in a worker thread, its failure as a `RemoteError`."""
        try:
            return await anyio.to_thread.run_sync(
                call, limiter=self._threads, abandon_on_cancel=True
            )
        except (RemoteError, BadOutput):
            raise
        except _failures() as exc:
            if isinstance(exc.__cause__, BadOutput):  # our refusal, wrapped by obstore
                raise exc.__cause__ from None
            raise RemoteError(
                f"{self.url}: {what} {key}: {redact(str(exc)) or type(exc).__name__}"
            ) from exc

    async def probe(self) -> None:
        """Raise `RemoteError` unless the store answers a listing."""
        obs = _obstore()

        def listing() -> None:
            if self.url.scheme == "file":
                _check_folder(self.url)
            for _ in obs.list(self._meta, prefix="renders/", chunk_size=1):
                break

        await self._call("cannot list", "renders/", listing)

    async def read(self, key: str) -> Stored | None:
        """A small object and its version token; None when there is none."""
        obs = _obstore()

        def get() -> Stored | None:
            try:
                result = obs.get(self._meta, key)
            except _missing():
                return None
            if result.meta["size"] > SMALL_LIMIT:
                raise RemoteError(f"{self.url}/{key} is too large to be kling-batch's")
            return Stored(bytes(result.bytes()), version_token(result.meta))

        return await self._call("cannot read", key, get)

    async def create(self, key: str, data: bytes) -> str | None:
        """Write `key` only if it does not exist (If-None-Match); its version token, or
        None when it already exists."""
        obs = _obstore()

        def put() -> str | None:
            try:
                return version_token(obs.put(self._meta, key, data, mode="create"))
            except _taken():
                return None

        return await self._call("cannot create", key, put)

    async def replace(self, key: str, data: bytes, etag: str | None) -> str | None:
        """Overwrite `key` only if it is still at the version token `etag` names (If-Match
        on its e_tag, or x-goog-if-generation-match on its version for GCS); the new version
        token, or None when another writer changed or removed it first."""
        obs = _obstore()

        def put() -> str | None:
            if self.url.scheme == "file":
                return self._replace_file(key, data, etag)
            try:
                mode = _update_mode(etag)
                return version_token(obs.put(self._meta, key, data, mode=mode))
            except (*_taken(), *_missing()):
                return None

        return await self._call("cannot update", key, put)

    def _replace_file(self, key: str, data: bytes, etag: str | None) -> str | None:
        """Compare-and-swap on a shared folder, which object_store does not offer: the
        version is checked and the file replaced (atomically) under a lock file beside it."""
        obs = _obstore()
        guard = filelock.FileLock(self.url.folder / (key + ".lock"), timeout=30)
        try:
            with guard:
                if version_token(obs.head(self._meta, key)) != etag:
                    return None
                return version_token(obs.put(self._meta, key, data))
        except _missing():
            return None
        except filelock.Timeout as exc:
            raise RemoteError(f"{self.url}/{key}: its lock file stays held ({exc})") from None

    async def size_of(self, key: str) -> int | None:
        """The size of the object at `key`, or None when there is none."""
        obs = _obstore()

        def head() -> int | None:
            try:
                return int(obs.head(self._meta, key)["size"])
            except _missing():
                return None

        return await self._call("cannot look up", key, head)

    async def upload(self, key: str, source: Path, sha256: str, size: int) -> None:
        """Stream a file to `key` in constant memory (parts of `CHUNK` for a large one).

        `BadOutput` (nothing stored) when the bytes read do not hash to `sha256`: the file
        changed under us, and a content-addressed key must never hold other bytes.
        """
        obs = _obstore()

        def put() -> None:
            if size <= CHUNK:
                body = _read_checked(source, sha256)
                obs.put(self._data, key, body, use_multipart=False)
                return
            chunks = _checked_chunks(source, sha256)
            obs.put(self._data, key, chunks, chunk_size=CHUNK, max_concurrency=_PARTS_IN_FLIGHT)

        await self._call("cannot upload", key, put)

    async def download(self, key: str, dest: Path) -> Download | None:
        """Stream `key` into `dest` (truncated first), hashing it; None when it is absent."""
        obs = _obstore()

        def get() -> Download | None:
            digest, size = hashlib.sha256(), 0
            try:
                result = obs.get(self._data, key)
            except _missing():
                return None
            with open(dest, "wb") as out:
                for chunk in result.stream(min_chunk_size=_READ_CHUNK):
                    view = memoryview(chunk)
                    digest.update(view)
                    out.write(view)
                    size += len(view)
            return Download(size=size, sha256=tagged(digest.hexdigest()))

        return await self._call("cannot download", key, get)


def version_token(meta: Mapping[str, Any]) -> str:
    """The opaque token naming one version of an object, from obstore's `get`/`head` meta
    or `put` result: `["<e_tag>", "<version>"]` in JSON, either part null when the store
    gives none. Both are kept because stores differ in what a conditional update needs
    (S3 and Azure the e_tag, GCS the version: its generation); callers only hand it back
    to `RemoteStore.replace` and compare it for equality."""
    return json.dumps([meta.get("e_tag"), meta.get("version")])


def _update_mode(token: str | None) -> UpdateVersion:
    """obstore's put mode for an update conditional on the version `token` names, without
    the parts that are null (no token: neither, which obstore refuses)."""
    e_tag, version = json.loads(token) if token is not None else (None, None)
    mode: UpdateVersion = {}
    if e_tag is not None:
        mode["e_tag"] = e_tag
    if version is not None:
        mode["version"] = version
    return mode


def open_store(url: RemoteUrl) -> RemoteStore:
    """A `RemoteStore` for `url`; `RemoteError` when obstore is missing or refuses the
    configuration (no request is sent yet)."""
    obs = _obstore()
    try:
        meta = _make_store(url, timeout="5s", retries=2)
        data = _make_store(url, timeout="1h", retries=3)
    except (obs.exceptions.BaseError, OSError) as exc:
        raise RemoteError(f"{url}: {redact(str(exc))}") from None
    return RemoteStore(url, meta, data)


def _make_store(url: RemoteUrl, *, timeout: str, retries: int) -> ObjectStore:
    from obstore.store import AzureStore, GCSStore, LocalStore, S3Store

    if url.scheme == "file":
        _check_folder(url)
        return LocalStore(prefix=url.folder, mkdir=True)
    client: dict[str, Any] = {
        "connect_timeout": "5s",
        "timeout": timeout,
        "read_timeout": "60s",
        "allow_http": _allow_http(url.scheme),
    }
    retry: dict[str, Any] = {
        "max_retries": retries,
        "retry_timeout": timedelta(seconds=10 * retries),
        "backoff": {
            "init_backoff": timedelta(milliseconds=100),
            "max_backoff": timedelta(seconds=2),
            "base": 2,
        },
    }
    options: dict[str, Any] = {"client_options": client, "retry_config": retry}
    if url.prefix:
        options["prefix"] = url.prefix
    if url.scheme == "gs":
        return GCSStore(url.bucket, **options)
    if url.scheme == "az":
        return AzureStore(url.bucket, **options)
    provider = _aws_profile_credentials()
    if provider is not None:
        options["credential_provider"] = provider
    return S3Store(url.bucket, **options)


def _check_folder(url: RemoteUrl) -> None:
    """A shared folder must exist: a missing one is more often an unmounted share than a
    new store, and creating it would hide renders on one machine."""
    if not Path(url.bucket).is_dir():
        raise RemoteError(f"{url}: no such folder (is the shared folder mounted?)")


def _aws_profile_credentials() -> Any:
    """boto3's credential chain (profiles, SSO, roles) when the environment holds no key
    and boto3 is installed; None to leave it to object_store's own chain."""
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return None
    try:
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        return None
    try:
        return Boto3CredentialProvider()
    except Exception:  # no credentials found there (or a broken profile): object_store's turn
        return None


def _allow_http(scheme: str) -> bool:
    """Plain http only to a loopback endpoint (MinIO, a test server) or when the provider's
    own `*_ALLOW_HTTP` variable says so."""
    variable = {"s3": "AWS_ALLOW_HTTP", "gs": "GOOGLE_ALLOW_HTTP", "az": "AZURE_ALLOW_HTTP"}
    if os.environ.get(variable[scheme], "").lower() in ("1", "true", "yes"):
        return True
    if scheme != "s3":
        return False
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"):
        endpoint = os.environ.get(name)
        if endpoint:
            return _loopback(urlsplit(endpoint).hostname or "")
    return False


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _obstore() -> Any:
    """The obstore module, or a `RemoteError` saying which extra brings it."""
    try:
        import obstore
        import obstore.exceptions
    except ImportError:
        raise RemoteError(
            "the shared render store needs the remote extra: pip install 'kling-batch[remote]'"
        ) from None
    return obstore


def _failures() -> tuple[type[BaseException], ...]:
    """What a store operation raises when it fails (obstore's errors, and the builtin
    ones it maps some to)."""
    from obstore.exceptions import BaseError

    return (BaseError, OSError, NotImplementedError, TimeoutError, ValueError, RuntimeError)


def _missing() -> tuple[type[BaseException], ...]:
    from obstore.exceptions import NotFoundError

    return (FileNotFoundError, NotFoundError)


def _taken() -> tuple[type[BaseException], ...]:
    from obstore.exceptions import AlreadyExistsError, PreconditionError

    return (AlreadyExistsError, PreconditionError, FileExistsError)


def _read_checked(source: Path, sha256: str) -> bytes:
    body = source.read_bytes()
    if tagged(hashlib.sha256(body).hexdigest()) != sha256:
        raise BadOutput(f"{source.name} no longer holds the recorded render")
    return body


def _checked_chunks(source: Path, sha256: str) -> Iterator[bytes]:
    """A file's bytes in chunks; raises before the last one when they hash otherwise."""
    digest = hashlib.sha256()
    with open(source, "rb") as stream:
        chunk = stream.read(_READ_CHUNK)
        while chunk:
            digest.update(chunk)
            following = stream.read(_READ_CHUNK)
            if not following and tagged(digest.hexdigest()) != sha256:
                # Before the last part goes: the upload is abandoned, nothing is stored.
                raise BadOutput(f"{source.name} changed while it was pushed")
            yield chunk
            chunk = following
