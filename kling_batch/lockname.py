"""Which lockfile a manifest has: `launch.toml` → `launch.lock`.

Kept apart from `kling_batch.lockfile` (which reads and writes lockfiles) so that what
only needs the name, such as an up-to-date `plan` answered from its stamp
(`kling_batch.uptodate`), does not load the lockfile's models.
"""

from __future__ import annotations

from pathlib import Path

from kling_batch.errors import UserError


def lock_path(manifest: Path, *, emulator: bool = False) -> Path:
    """`launch.toml` → `launch.lock` (or `launch.emulator.lock` for emulator renders).

    A manifest named `*.emulator.toml` is refused: its lockfile would be another
    manifest's emulator lockfile, and emulator renders must never pass for paid ones.
    """
    if manifest.stem.lower().endswith(".emulator"):
        raise UserError(
            f"a manifest named {manifest.name} would share its lockfile with the emulator "
            f"renders of {manifest.stem.removesuffix('.emulator')}{manifest.suffix}; "
            "rename it",
            file=manifest,
        )
    twins = [
        other
        for other in (manifest.with_suffix(".toml"), manifest.with_suffix(".json"))
        if other.name != manifest.name and other.is_file()
    ]
    if twins:
        raise UserError(
            f"{manifest.name} and {twins[0].name} would share one lockfile "
            f"({manifest.stem}.lock) and overwrite each other's records; rename one",
            file=manifest,
        )
    suffix = ".emulator.lock" if emulator else ".lock"
    return manifest.with_name(manifest.stem + suffix)


def emulator_only_hint(manifest: Path, command: str) -> str | None:
    """A note when the manifest has emulator renders (`X.emulator.lock`) but no `X.lock`."""
    real, emulated = lock_path(manifest), lock_path(manifest, emulator=True)
    if real.exists() or not emulated.is_file():
        return None
    return (
        f"note: {manifest.name} has only emulator renders ({emulated.name}, no {real.name}); "
        f"add --emulator to see them: kling-batch {command} {manifest} --emulator"
    )
