"""Naming a remote: which URLs are accepted, which one wins, and what error text may show."""

from __future__ import annotations

import pytest

from kling_batch.errors import RemoteError, UserError
from kling_batch.remote import (
    RemoteUrl,
    claim_key,
    object_key,
    parse_remote,
    record_key,
    redact,
    resolve_remote,
)

HEX = "ab" * 32


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("s3://bucket/team/launch", RemoteUrl("s3", "bucket", "team/launch")),
        ("s3://bucket", RemoteUrl("s3", "bucket", "")),
        ("gs://bucket/prefix/", RemoteUrl("gs", "bucket", "prefix")),
        ("az://container/prefix", RemoteUrl("az", "container", "prefix")),
        ("file:///mnt/shared/renders", RemoteUrl("file", "/mnt/shared/renders")),
    ],
)
def test_the_four_kinds_of_remote_parse(text: str, parsed: RemoteUrl) -> None:
    """S3, GCS, Azure and a shared folder are each named by a URL."""
    assert parse_remote(text) == parsed


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("https://bucket.example.com/x", "use one of s3://"),
        ("s3://AKIA:secret@bucket/x", "credentials or options in the URL are refused"),
        ("s3://bucket/x?X-Amz-Security-Token=abc", "credentials or options in the URL are refused"),
        ("file://shared/renders", "absolute path"),
        ("s3:///prefix-only", "name the bucket"),
    ],
)
def test_a_bad_remote_is_refused_naming_the_field(text: str, said: str) -> None:
    """A URL that could carry credentials, or names nothing usable, is a user error."""
    with pytest.raises(UserError) as caught:
        parse_remote(text, file="launch.toml")
    assert said in str(caught.value)
    assert caught.value.field == "remote"


def test_the_command_line_overrides_the_manifest_and_none_turns_it_off() -> None:
    """`--remote` / KLING_BATCH_REMOTE win over `remote =`; `none` means no store."""
    assert resolve_remote("s3://a/x", None) == RemoteUrl("s3", "a", "x")
    assert resolve_remote("s3://a/x", "gs://b/y") == RemoteUrl("gs", "b", "y")
    assert resolve_remote("s3://a/x", "none") is None
    assert resolve_remote(None, None) is None


def test_emulator_renders_live_below_their_own_folder() -> None:
    """Emulator renders can never be restored as paid ones: they live apart."""
    assert RemoteUrl("s3", "a", "x").below("emulator") == RemoteUrl("s3", "a", "x/emulator")
    assert RemoteUrl("file", "/mnt/r").below("emulator").folder.as_posix() == "/mnt/r/emulator"


def test_store_keys_are_built_only_from_sha256_digests() -> None:
    """A lockfile from someone else cannot make a key point elsewhere in the store."""
    assert object_key(f"sha256:{HEX}") == f"objects/sha256/{HEX}"
    assert record_key(f"sha256:{HEX}") == f"renders/{HEX}.json"
    assert claim_key(f"sha256:{HEX}") == f"claims/{HEX}"
    with pytest.raises(RemoteError):
        object_key("sha256:../../claims/x")


def test_error_text_loses_credentials_and_url_queries(monkeypatch: pytest.MonkeyPatch) -> None:
    """A store's error is shown as one line without secrets or signed-URL queries."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    text = (
        "Error performing GET https://acct.blob.core.windows.net/c/x?sig=abcdef&se=1 "
        "with key s3cr3t-value\n\nDebug source: lots"
    )
    shown = redact(text)
    assert "s3cr3t-value" not in shown and "sig=" not in shown and "Debug" not in shown
    assert "https://acct.blob.core.windows.net/c/x" in shown
