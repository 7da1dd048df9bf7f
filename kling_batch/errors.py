"""The exception tree every layer raises into; the CLI maps it to exit codes.

    KlingBatchError
     ├── UserError          exit 2: a manifest, lockfile or usage mistake; names file, shot, field
     ├── RefusedError       exit 3: over budget, not confirmed, no --yes without a TTY
     └── RunError           exit 1: a runtime failure outside any one shot

API errors live in `kling_batch.client` under `ApiError`, a `RunError`.
"""

from __future__ import annotations

from pathlib import Path


class KlingBatchError(Exception):
    """Base of every error kling-batch raises on purpose."""

    exit_code = 1


class UserError(KlingBatchError):
    """Invalid input: the message names the file, the shot and the field."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: Path | str | None = None,
        shot: str | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = str(file) if file is not None else None
        self.shot = shot
        self.field = field
        self.line = line

    def __str__(self) -> str:
        where: list[str] = []
        if self.file:
            where.append(f"{self.file}:{self.line}" if self.line else self.file)
        if self.shot:
            where.append(f"shot {self.shot!r}")
        if self.field:
            where.append(f"field {self.field!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class RefusedError(KlingBatchError):
    """The run was refused before spending: over budget or not confirmed."""

    exit_code = 3


class RunError(KlingBatchError):
    """A runtime failure that is not the user's input (network, API, disk)."""

    exit_code = 1
