"""The manifest: TOML or JSON files read into one pydantic model, with `include`d shot files."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import tomli
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kling_batch import safefiles
from kling_batch.canonical import text_digest
from kling_batch.errors import Loc, UserError, validation_error
from kling_batch.include_globs import matching_files
from kling_batch.limits import INCLUDE_MAX_FILES, MANIFEST_MAX_BYTES
from kling_batch.manifest_cache import ParseCache, shot_chunks
from kling_batch.toml_errors import syntax_problem

# A string holding Jinja syntax: lets an enum or number field be set from a template.
Template = Annotated[
    str,
    Field(pattern=r"\{[{%#]", description="A Jinja2 template that renders to a valid value."),
]
Scalar = str | int | float | bool

_TOO_DEEP = "values are nested too deeply to read"
_STRICT = ConfigDict(extra="forbid", populate_by_name=True)
M = TypeVar("M", bound=BaseModel)


class RequestFields(BaseModel):
    """The kling-o3 request fields a manifest may set; every string is a template."""

    model_config = _STRICT

    prompt: str | None = Field(None, description="Scenes split on | or newlines; `Ns:` prefix.")
    model_tier: Literal["standard", "pro", "4k"] | Template | None = None
    workflow: Literal["auto", "t2v", "i2v", "video_edit", "reference"] | Template | None = None
    aspect_ratio: Literal["16:9", "1:1", "9:16"] | Template | None = None
    duration: Annotated[float, Field(ge=3, le=15, strict=True)] | Template | None = Field(
        None, description="Whole seconds per scene, 3-15."
    )
    sound: Annotated[bool, Field(strict=True)] | Template | None = None
    keep_original_sound: Annotated[bool, Field(strict=True)] | Template | None = None
    image: str | None = Field(None, description="Local path, https:// URL or bunny:// path.")
    image_end: str | None = None
    video: str | None = None
    reference_images: list[str] | str | None = None
    reference_videos: list[str] | str | None = None


REQUEST_FIELD_NAMES = tuple(RequestFields.model_fields)


class Shot(RequestFields):
    """One shot: request fields plus how it expands (matrix, takes) and where it lands."""

    id: str = Field(description="Unique after expansion; [A-Za-z0-9._-]; a template.")
    matrix: dict[str, list[Any]] | None = Field(
        None,
        description="Lists to cross; `include`/`exclude` lists of tables as in GitHub Actions.",
    )
    takes: int = Field(1, ge=1, le=100, strict=True, description="Renders of the same request.")
    output: str | None = Field(None, description="Path under output_dir; default {{ id }}.mp4.")
    tags: list[str] = Field(default_factory=list)
    enabled: bool = True


class Manifest(BaseModel):
    """A kling-batch manifest (version 1)."""

    model_config = _STRICT

    schema_: str | None = Field(None, alias="$schema", description="Editor schema hint.")
    version: Literal[1] = Field(description="Manifest format version.")
    name: str = Field(description="Project name, available to templates as manifest.name.")
    output_dir: str = Field("renders", description="Folder for outputs, relative to this file.")
    budget_usd: Annotated[Decimal, Field(ge=0)] | None = Field(
        None, description="run refuses a plan whose cost to run exceeds it."
    )
    remote: str | None = Field(
        None,
        pattern=r"^(s3|gs|az|file)://",
        description=(
            "The team's shared render store: s3://bucket/prefix, gs://, az:// or "
            "file:///shared/folder; --remote and KLING_BATCH_REMOTE override it."
        ),
    )
    include: list[str] = Field(
        default_factory=list, description="Globs of shot files, relative to this file."
    )
    vars: dict[str, Any] = Field(default_factory=dict, description="Free values for templates.")
    defaults: RequestFields = Field(default_factory=RequestFields)
    shots: list[Shot] = Field(default_factory=list)


class IncludedShots(BaseModel):
    """A file named by `include`: more shots for the including manifest."""

    model_config = _STRICT

    schema_: str | None = Field(None, alias="$schema")
    shots: list[Shot] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SourcedShot:
    """A shot with the file it came from, for error messages, and the digest of its
    source text when the parse cache read it (what the plan cache knows it by)."""

    shot: Shot
    file: Path
    index: int
    digest: str | None = None


@dataclass(frozen=True, slots=True)
class LoadedManifest:
    """A manifest and every shot it includes, with the folder its paths are relative to."""

    path: Path
    manifest: Manifest
    shots: tuple[SourcedShot, ...]
    # The shot files `include` matched, in the order read (`included_files`).
    included: tuple[Path, ...] = ()

    @property
    def root(self) -> Path:
        """The manifest's folder: templates, assets and outputs live under it."""
        return self.path.parent

    def display(self, path: Path) -> str:
        """A path as users wrote it: relative to the manifest's folder."""
        return display_path(self.root, path)


def display_path(root: Path, path: Path) -> str:
    """`path` relative to `root` when it is below it, else as it is."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def load_manifest(path: Path, cache: ParseCache | None = None) -> LoadedManifest:
    """Read a manifest and its includes; raise `UserError` naming file, shot and field.

    With `cache`, TOML files are parsed shot table by shot table, unchanged ones from it.
    """
    path = Path(path)
    data, digests = _read(path, "a manifest", cache)
    manifest = _validate(Manifest, path, data)
    shots = _sourced(manifest.shots, path, digests)
    files = included_files(path, manifest.include)
    for included in files:
        data, digests = _read(included, "a shot file", cache)
        shots.extend(_sourced(_validate(IncludedShots, included, data).shots, included, digests))
    return LoadedManifest(path, manifest, tuple(shots), tuple(files))


@dataclass(frozen=True, slots=True)
class ShotPlace:
    """A shot table left unread (`load_unsettled`): its file, its place there and the
    digest of its text, as a `SourcedShot` read through the parse cache has them."""

    file: Path
    index: int
    digest: str


# A shot as `load_unsettled` walks it: read and validated, or left unread.
Walked = SourcedShot | ShotPlace


def load_unsettled(
    path: Path, settled: Callable[[ShotPlace], bool]
) -> tuple[LoadedManifest, list[Walked]] | None:
    """The manifest with only the shot tables `settled` does not claim read and validated,
    and every shot in order; None when a file is not TOML cut into one table per
    `[[shots]]` header (`manifest_cache.shot_chunks`), or a chunk read says so otherwise:
    `load_manifest` then reads it all. `UserError` as `load_manifest` raises it, though
    not always naming the shot (the caller reads it all then, for the full message).

    A settled table's text is the one the caller read and checked before (its digest),
    so it parses as it did: alone, to one shot table (see `manifest_cache`). Nothing of
    it is parsed or validated, which at 100,000 shots is most of a plan's memory.
    """
    path = Path(path)
    read = _unsettled_file(path, "a manifest", Manifest, settled)
    if read is None:
        return None
    manifest, walked = read
    files = included_files(path, manifest.include)
    for included in files:
        more = _unsettled_file(included, "a shot file", IncludedShots, settled)
        if more is None:
            return None
        walked.extend(more[1])
    shots = tuple(shot for shot in walked if isinstance(shot, SourcedShot))
    return LoadedManifest(path, manifest, shots, tuple(files)), walked


def _unsettled_file(
    path: Path, what: str, model: type[M], settled: Callable[[ShotPlace], bool]
) -> tuple[M, list[Walked]] | None:
    """One file of `load_unsettled`: its head validated as `model`, and its shots."""
    if path.suffix.lower() != ".toml":
        return None
    text = _text(path, what)
    cut = shot_chunks(text) or (text, [])
    head = _lone_table(cut[0])
    if head is None or "shots" in head:
        return None
    walked: list[Walked] = []
    for index, chunk in enumerate(cut[1]):
        place = ShotPlace(path, index, text_digest(chunk))
        if settled(place):
            walked.append(place)
            continue
        shot = _chunk_shot(place, chunk)
        if shot is None:
            return None
        walked.append(shot)
    return _validate(model, path, head), walked


def read_shot(place: ShotPlace) -> SourcedShot | None:
    """The shot `load_unsettled` left unread at `place`, read now; None when its file no
    longer holds that text there."""
    cut = shot_chunks(_text(place.file, "a shot file"))
    if cut is None or place.index >= len(cut[1]):
        return None
    chunk = cut[1][place.index]
    return _chunk_shot(place, chunk) if text_digest(chunk) == place.digest else None


def _chunk_shot(place: ShotPlace, chunk: str) -> SourcedShot | None:
    """The shot of one chunk (`load_unsettled`), validated; None unless it parses alone to
    exactly one shot table."""
    parsed = _lone_table(chunk)
    tables = parsed.get("shots") if parsed is not None else None
    if parsed is None or len(parsed) != 1 or not isinstance(tables, list) or len(tables) != 1:
        return None
    if not isinstance(tables[0], dict):
        return None
    shot = _validate(IncludedShots, place.file, {"shots": tables}).shots[0]
    return SourcedShot(shot, place.file, place.index, place.digest)


def _lone_table(text: str) -> dict[str, Any] | None:
    try:
        return tomli.loads(text)
    except (tomli.TOMLDecodeError, RecursionError):
        return None


def _sourced(shots: list[Shot], path: Path, digests: list[str] | None) -> list[SourcedShot]:
    if digests is None or len(digests) != len(shots):
        return [SourcedShot(shot, path, index) for index, shot in enumerate(shots)]
    return [
        SourcedShot(shot, path, index, digest)
        for index, (shot, digest) in enumerate(zip(shots, digests, strict=True))
    ]


def require_manifest(path: Path) -> None:
    """Refuse (exit 2) a manifest that is not there: commands that read only its lockfile
    would otherwise report an empty project for a mistyped name."""
    if not path.is_file():
        raise UserError("file not found" if not path.exists() else "not a file", file=path)


def read_document(path: Path, what: str = "a manifest") -> dict[str, Any]:
    """Parse a `.toml` or `.json` file into plain data; syntax errors name the line.

    Only a regular file of at most `MANIFEST_MAX_BYTES` is read; a leading BOM is dropped.
    """
    return _read(path, what, None)[0]


def _read(
    path: Path, what: str, cache: ParseCache | None
) -> tuple[dict[str, Any], list[str] | None]:
    """`read_document`, with each shot's chunk digest when the parse cache read it."""
    text = _text(path, what)
    suffix = path.suffix.lower()
    if suffix == ".toml" and cache is not None:
        chunked = cache.parse_toml(text)
        if chunked is not None:
            return chunked
    return _parse(path, text, suffix), None


def _text(path: Path, what: str) -> str:
    try:
        return safefiles.read_text(path, limit=MANIFEST_MAX_BYTES, what=what)
    except FileNotFoundError:
        raise UserError("file not found", file=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read: {exc}", file=path) from None


def _parse(path: Path, text: str, suffix: str) -> dict[str, Any]:
    if suffix == ".toml":
        try:
            return tomli.loads(text)
        except tomli.TOMLDecodeError as exc:
            message, line = syntax_problem(exc, text)
            raise UserError(f"TOML syntax error: {message}", file=path, line=line) from None
        except RecursionError:
            raise UserError(_TOO_DEEP, file=path) from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except RecursionError:
            raise UserError(_TOO_DEEP, file=path) from None
        except json.JSONDecodeError as exc:
            raise UserError(f"JSON syntax error: {exc.msg}", file=path, line=exc.lineno) from None
        if not isinstance(data, dict):
            raise UserError("a manifest must be a JSON object", file=path, line=1)
        return data
    raise UserError("manifests are .toml or .json files", file=path)


def included_files(path: Path, patterns: list[str]) -> list[Path]:
    """The files the `include` globs of the manifest at `path` match, each once, the
    manifest itself left out; a glob that matches nothing or leads out is refused. A glob
    does not go through links to folders (`include_globs`), and may match at most
    `INCLUDE_MAX_FILES` files."""
    root, manifest = path.parent.resolve(), path.resolve()
    found: dict[Path, None] = {}  # in the order matched, each once
    for pattern in patterns:
        for match in _glob_matches(path, pattern):
            real = safefiles.real_path(match)
            if real is None:
                shown = match.relative_to(path.parent).as_posix()
                raise UserError(
                    f"include {pattern!r}: {shown}'s symlinks go round in a loop",
                    file=path,
                    field="include",
                )
            if not real.is_relative_to(root):
                raise UserError(
                    f"include {pattern!r} leads outside the manifest's folder",
                    file=path,
                    field="include",
                )
            if real != manifest:
                found[match] = None
    return list(found)


def _glob_matches(path: Path, pattern: str) -> list[Path]:
    """What one `include` glob matches: not folders, so a FIFO or device is refused by name
    when read, not skipped; a glob that is no relative path or matches nothing is refused."""
    problem = safefiles.path_problem(pattern)
    if problem is not None:
        raise UserError(f"include {safefiles.shown(pattern)} {problem}", file=path, field="include")
    if Path(pattern).is_absolute() or ".." in Path(pattern).parts:
        raise UserError(
            f"include {pattern!r} must be a relative glob inside the manifest's folder",
            file=path,
            field="include",
        )
    matches = matching_files(path.parent, pattern, INCLUDE_MAX_FILES)
    if matches is None:
        raise UserError(
            f"include {pattern!r} matches more than {INCLUDE_MAX_FILES:,} files",
            file=path,
            field="include",
        )
    if not matches:
        raise UserError(f"include {pattern!r} matches no file", file=path, field="include")
    return matches


def _validate(model: type[M], path: Path, data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _user_error(model, path, data, exc) from None


def _user_error(
    model: type[BaseModel], path: Path, data: dict[str, Any], exc: ValidationError
) -> UserError:
    """Pydantic's complaint as one line: file, line, shot, field, and a "did you mean"."""

    def split(loc: Loc) -> tuple[str | None, Loc]:
        if len(loc) >= 2 and loc[0] == "shots" and isinstance(loc[1], int):
            raw = data.get("shots", [])[loc[1]] if isinstance(data.get("shots"), list) else None
            shot_id = raw.get("id") if isinstance(raw, dict) else None
            return (str(shot_id) if shot_id else f"shots[{loc[1]}]"), loc[2:]
        return None, loc

    def known_keys(loc: Loc) -> list[str]:
        if loc and loc[0] == "shots":
            return list(Shot.model_fields)
        if loc and loc[0] == "defaults":
            return list(RequestFields.model_fields)
        return [field.alias or name for name, field in model.model_fields.items()]

    def line(key: str | None, loc: Loc) -> int | None:
        index = loc[1] if len(loc) >= 2 and loc[0] == "shots" else None
        return _guess_line(path, key, index if isinstance(index, int) else None)

    return validation_error(exc, file=path, split=split, known_keys=known_keys, line=line)


def _guess_line(path: Path, key: str | None, shot_index: int | None) -> int | None:
    """Best-effort line of `key` (in the given shot); None rather than a wrong line.

    TOML and JSON parsers keep no positions. A key found once in the file is certain; in
    TOML the search can also be bounded to the shot's `[[shots]]` table.
    """
    if key is None:
        return None
    try:
        text = safefiles.read_text(path, limit=MANIFEST_MAX_BYTES, what="a manifest")
    except (OSError, UnicodeDecodeError, UserError):
        return None
    lines = text.splitlines()
    pattern = re.compile(rf"""^\s*["']?{re.escape(key)}["']?\s*[=:]|"{re.escape(key)}"\s*:""")
    hits = [number for number, text in enumerate(lines) if pattern.search(text)]
    if shot_index is None or path.suffix.lower() != ".toml":
        return hits[0] + 1 if len(hits) == 1 else None
    headers = [i for i, text in enumerate(lines) if re.match(r"\s*\[\[\s*shots\s*\]\]", text)]
    if len(headers) <= shot_index:
        return None
    start = headers[shot_index]
    end = headers[shot_index + 1] if shot_index + 1 < len(headers) else len(lines)
    inside = [number for number in hits if start <= number < end]
    return inside[0] + 1 if inside else None
