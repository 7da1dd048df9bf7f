"""Signer: HMAC-signed, expiring CDN paths for outputs and uploads."""

from __future__ import annotations

import hashlib
import hmac
import secrets


class Signer:
    """Signs `(path, expires)` pairs with a per-emulator secret."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)

    def sign(self, path: str, expires: str) -> str:
        """A 32-hex-digit signature of `path` valid until unix time `expires`."""
        message = f"{path}|{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]

    def verify(self, path: str, expires: str, signature: str) -> bool:
        """Whether `signature` was made by `sign(path, expires)`."""
        return hmac.compare_digest(self.sign(path, expires), signature)


def expires_text(unix: float) -> str:
    """Unix time as the `expires=` query value (milliseconds, so tiny time scales still work)."""
    return f"{unix:.3f}"
