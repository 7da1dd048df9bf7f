"""Expansion: each shot × its matrix × its takes, every string rendered, into RenderSpecs."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, time
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from kling_batch import safefiles
from kling_batch.errors import TemplateProblem, UserError
from kling_batch.limits import MAX_RENDERS
from kling_batch.manifest import REQUEST_FIELD_NAMES, LoadedManifest, ShotPlace, SourcedShot

if TYPE_CHECKING:  # the template engine loads only when a shot is expanded (issue 13)
    from kling_batch.templating import Templates

_ID = re.compile(r"[A-Za-z0-9._-]+")
_MATRIX_KEYWORDS = ("include", "exclude")


@dataclass(frozen=True, slots=True)
class ShotContext:
    """`shot` inside templates: the render id, the shot's own id, its index and take."""

    id: str
    name: str
    index: int
    take: int


@dataclass(frozen=True, slots=True)
class ManifestContext:
    """`manifest` inside templates."""

    name: str


@dataclass(frozen=True, slots=True)
class RenderSpec:
    """One render after templating and before validation against the model schema."""

    id: str
    shot: str
    take: int
    fields: Mapping[str, Any]
    output: PurePosixPath
    tags: tuple[str, ...]
    file: Path


def expand_shots(
    loaded: LoadedManifest, templates: Templates | None = None, *, max_renders: int = MAX_RENDERS
) -> list[RenderSpec]:
    """Every render the manifest asks for, in manifest order; ids and outputs unique.

    Refused before any work when the manifest would expand to over `max_renders` renders.
    """
    check_render_count(loaded, max_renders)
    expansion = Expansion(loaded, templates)
    return [spec for sourced in loaded.shots for spec in expansion.shot(sourced)]


class Expansion:
    """Expands a manifest's shots one at a time, in order, keeping what spans shots: the
    render index, the ids and outputs claimed so far, the output folders checked.

    The template engine starts only when a shot is expanded: a plan whose shots all come
    from the plan cache (`claim` instead of `shot`) renders no template.
    """

    def __init__(
        self,
        loaded: LoadedManifest,
        templates: Templates | None = None,
        is_dir: Callable[[str], bool] | None = None,
    ) -> None:
        self.loaded = loaded
        self._templates = templates
        self._renderer: _CachedRenderer | None = None
        self._base_context: dict[str, Any] | None = None
        manifest = loaded.manifest
        self._defaults = manifest.defaults.model_dump(exclude_none=True)
        self._field_names = set(REQUEST_FIELD_NAMES)
        self._seen_ids: dict[str, SourcedShot | ShotPlace] = {}
        self._outputs = _Outputs()
        self.dirs = _SafeDirs(loaded, is_dir)
        self.index = 0  # the next render's index (`shot.index` in templates)

    @property
    def renderer(self) -> _CachedRenderer:
        """The template renderer, started on first use."""
        if self._renderer is None:
            from kling_batch.templating import Templates

            templates = self._templates or Templates(self.loaded.root)
            self._templates = templates
            self._renderer = _CachedRenderer(templates)
        return self._renderer

    @property
    def templates(self) -> Templates | None:
        """The template engine, if a shot was expanded."""
        return self._templates

    def _context(self) -> dict[str, Any]:
        if self._base_context is None:
            manifest = self.loaded.manifest
            values = {**manifest.vars, "manifest": ManifestContext(manifest.name)}
            self._base_context = self.renderer.templates.context(values)
        return self._base_context

    def shot(self, sourced: SourcedShot) -> list[RenderSpec]:
        """The renders of one shot (none when it is disabled), its ids and outputs claimed."""
        shot = sourced.shot
        if not shot.enabled:
            return []
        renderer = self.renderer
        shot_fields = shot.model_dump(include=self._field_names, exclude_none=True)
        specs: list[RenderSpec] = []
        for combo in expand_matrix(sourced):
            context = {**self._context(), **combo}
            raw_fields = _raw_fields(shot_fields, combo, self._defaults)
            base_id = _render_id(renderer, sourced, context)
            for take in range(1, shot.takes + 1):
                render_id = base_id if shot.takes == 1 else f"{base_id}-take{take}"
                self.claim_id(sourced, render_id)
                shot_ctx = ShotContext(render_id, base_id, self.index, take)
                context_take = {**context, "id": render_id, "shot": shot_ctx}
                spec = _render_spec(
                    renderer, self.loaded, sourced, raw_fields, context_take, shot_ctx, self.dirs
                )
                self._outputs.claim(spec.output, spec.id, sourced.file)
                specs.append(spec)
                self.index += 1
        return specs

    def claim_id(self, sourced: SourcedShot | ShotPlace, render_id: str) -> None:
        """Take `render_id` for a render of `sourced`; refuse one already taken."""
        if render_id in self._seen_ids:
            first = self._seen_ids[render_id]
            raise UserError(
                f"duplicate id after expansion (also made by shot #{first.index + 1}"
                f" in {first.file.name})",
                file=sourced.file,
                shot=render_id,
                field="id",
            )
        self._seen_ids[render_id] = sourced

    def claim(
        self,
        sourced: SourcedShot | ShotPlace,
        renders: Iterable[tuple[str, PurePosixPath | str]],
    ) -> None:
        """Take the ids and outputs of a shot expanded before (the plan cache's renders,
        or the up-to-date stamp's), with the checks `shot` makes across shots."""
        for render_id, output in renders:
            self.claim_id(sourced, render_id)
            self._outputs.claim(output, render_id, sourced.file)
            self.index += 1


def check_render_count(loaded: LoadedManifest, limit: int) -> None:
    """Refuse a manifest that would expand to over `limit` renders, before expanding it.

    Counted from the matrix sizes alone (a product of a few lengths per shot), so a
    10^8-render matrix is refused at once instead of after minutes and gigabytes.
    """
    total, exact = 0, True
    for sourced in loaded.shots:
        if not sourced.shot.enabled:
            continue
        count, exact_here = count_renders(sourced)
        total, exact = total + count, exact and exact_here
        if total > limit:
            field = "matrix" if sourced.shot.matrix is not None else "takes"
            raise UserError(
                f"the manifest expands to {'' if exact else 'up to '}{total:,} renders "
                f"({count:,} from this shot), over the limit of {limit:,}; raise it with "
                "--max-renders",
                file=sourced.file,
                shot=sourced.shot.id,
                field=field,
            )


def count_renders(sourced: SourcedShot) -> tuple[int, bool]:
    """Renders one shot expands to, and whether that is exact (else an upper bound).

    Exact for a plain matrix: the product of the axis lengths, times `takes`. With
    `include`, plus one per entry (each adds at most one); `exclude` is not subtracted:
    every combination is looked at before it is excluded, so the work is counted (an
    `exclude = [{}]` that removes all must not let a 10^8-combination matrix through).
    """
    matrix = sourced.shot.matrix
    if matrix is None:
        return sourced.shot.takes, True
    axes = {key: values for key, values in matrix.items() if key not in _MATRIX_KEYWORDS}
    combos = math.prod(len(values) for values in axes.values()) if axes else 0
    includes = len(matrix.get("include", []))
    exact = "include" not in matrix and "exclude" not in matrix
    return (combos + includes) * sourced.shot.takes, exact


def expand_matrix(sourced: SourcedShot) -> list[dict[str, Any]]:
    """Matrix combinations with GitHub Actions' `include`/`exclude` rules; `[{}]` without one."""
    matrix = sourced.shot.matrix
    if matrix is None:
        return [{}]

    def fail(message: str, field: str = "matrix") -> UserError:
        return UserError(message, file=sourced.file, shot=sourced.shot.id, field=field)

    axes = {key: values for key, values in matrix.items() if key not in _MATRIX_KEYWORDS}
    include = _table_list(matrix.get("include", []), fail, "matrix.include")
    exclude = _table_list(matrix.get("exclude", []), fail, "matrix.exclude")
    if not axes and not include:
        raise fail("the matrix is empty: give at least one key with a list of values")
    for key, values in axes.items():
        if not values:
            raise fail(f"matrix key {key!r} has no values", f"matrix.{key}")
    for entry in exclude:
        unknown = set(entry) - set(axes)
        if unknown:
            raise fail(f"exclude names {sorted(unknown)[0]!r}, not a matrix key", "matrix.exclude")
    every = (dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values()))
    originals = [c for c in every if not any(_contains(c, entry) for entry in exclude)]
    combos = [dict(c) for c in originals]
    for entry in include:
        matched = False
        for original, combo in zip(originals, combos, strict=True):
            if all(original[k] == v for k, v in entry.items() if k in original):
                combo.update(entry)
                matched = True
        if not matched:
            combos.append(dict(entry))
    if not combos:
        raise fail("the matrix is empty after exclude")
    return combos


def _table_list(value: Any, fail: Any, field: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise fail(f"{field} must be a list of tables", field)
    return value


def _contains(combo: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
    return all(combo.get(key) == value for key, value in entry.items())


def _render_id(renderer: _CachedRenderer, sourced: SourcedShot, context: dict[str, Any]) -> str:
    render_id = renderer.render(sourced, sourced.shot.id, "id", context)
    if not _ID.fullmatch(render_id):
        raise UserError(
            f"id {render_id!r} may only use letters, digits, '.', '_' and '-'",
            file=sourced.file,
            shot=render_id or sourced.shot.id,
            field="id",
        )
    return render_id


def _render_spec(
    renderer: _CachedRenderer,
    loaded: LoadedManifest,
    sourced: SourcedShot,
    raw_fields: Mapping[str, Any],
    context: dict[str, Any],
    shot_ctx: ShotContext,
    dirs: _SafeDirs,
) -> RenderSpec:
    shot = sourced.shot
    fields = {
        name: renderer.render_value(sourced, value, name, context, shot_ctx.id)
        for name, value in raw_fields.items()
    }
    output_template = shot.output or "{{ id }}.mp4"
    output_text = renderer.render(sourced, output_template, "output", context, shot_ctx.id)
    return RenderSpec(
        id=shot_ctx.id,
        shot=shot_ctx.name,
        take=shot_ctx.take,
        fields=fields,
        output=dirs.output_path(sourced, output_text, shot_ctx.id),
        tags=tuple(shot.tags),
        file=sourced.file,
    )


def _raw_fields(
    shot_fields: Mapping[str, Any], combo: Mapping[str, Any], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """Request fields before templating: the shot's, else the matrix's, else the defaults."""
    from_matrix = {name: combo[name] for name in REQUEST_FIELD_NAMES if name in combo}
    return {**defaults, **from_matrix, **shot_fields}


class _Outputs:
    """Each render's output once: not twice, and not twice in different letter case
    (one file on macOS and Windows)."""

    def __init__(self) -> None:
        # Folded output → the render writing it, with the output as written when folding
        # changed it (one string per output, not three, at 100,000 outputs: issue 13).
        self._owners: dict[str, str | tuple[str, str]] = {}

    def claim(self, output: PurePosixPath | str, render_id: str, file: Path) -> None:
        """Record a render's output; refuse one another render already writes."""
        shown = str(output)
        key = shown.casefold()
        if key == shown:
            key = shown
        owner = self._owners.get(key)
        if owner is not None:
            path, other = (key, owner) if isinstance(owner, str) else owner
            same = f"output {output} is also the output of {other!r}"
            folded = (
                f"output {output} and {path}, the output of {other!r}, differ only "
                "in letter case: one file on macOS and Windows"
            )
            raise UserError(
                same if path == shown else folded,
                file=file,
                shot=render_id,
                field="output",
            )
        self._owners[key] = render_id if key is shown else (shown, render_id)


class _SafeDirs:
    """Checks output paths stay inside output_dir, resolving each folder only once."""

    def __init__(self, loaded: LoadedManifest, is_dir: Callable[[str], bool] | None = None) -> None:
        self.root = loaded.root.resolve()
        self._is_dir = is_dir or (lambda relative: (self.root / relative).is_dir())
        self.output_dir = PurePosixPath(loaded.manifest.output_dir)
        self._answers: dict[str, bool] = {}
        self._parents: dict[str, bool] = {}
        problem = safefiles.path_problem(loaded.manifest.output_dir)
        if problem is not None:
            raise UserError(
                f"output_dir {safefiles.shown(loaded.manifest.output_dir)} {problem}",
                file=loaded.path,
                field="output_dir",
            )
        target = safefiles.real_path(self.root / self.output_dir)
        if target is None:
            raise UserError(
                f"output_dir {loaded.manifest.output_dir!r}: its symlinks go round in a loop",
                file=loaded.path,
                field="output_dir",
            )
        if not target.is_relative_to(self.root):
            raise UserError(
                f"output_dir {loaded.manifest.output_dir!r} leads outside the manifest's folder",
                file=loaded.path,
                field="output_dir",
            )
        self.target = target

    def output_path(self, sourced: SourcedShot, text: str, render_id: str) -> PurePosixPath:
        """`output_dir/text`, relative to the manifest folder; refused if it leads outside."""
        relative = text.replace("\\", "/")
        folder = relative.rpartition("/")[0]
        problem = safefiles.path_problem(text)
        if problem is not None:
            raise UserError(
                f"output {safefiles.shown(text)} {problem}",
                file=sourced.file,
                shot=render_id,
                field="output",
            )
        if (
            not relative.strip()
            or relative.startswith("/")
            or relative.endswith("/")
            or ".." in relative.split("/")
            or not self._inside(folder)
        ):
            raise UserError(
                f"output {text!r} must be a relative file path inside output_dir "
                f"{str(self.output_dir)!r}",
                file=sourced.file,
                shot=render_id,
                field="output",
            )
        output = self.output_dir / relative
        if self._is_dir(str(output)):
            raise UserError(
                f"output {output} is an existing folder; a render cannot be written there",
                file=sourced.file,
                shot=render_id,
                field="output",
            )
        return output

    def still_fine(self, output: PurePosixPath) -> bool:
        """True when an output path checked by an earlier plan still passes the checks
        that depend on the folder: its folder does not lead out, it is not a folder."""
        text = str(output)
        parent = text.rpartition("/")[0]
        inside = self._parents.get(parent)
        if inside is None:
            real = safefiles.real_path(self.root / parent)
            inside = real is not None and real.is_relative_to(self.target)
            self._parents[parent] = inside
        return inside and not self._is_dir(text)

    def _inside(self, folder: str) -> bool:
        answer = self._answers.get(folder)
        if answer is None:
            # resolve() follows symlinks: a linked folder must not lead out of output_dir.
            resolved = safefiles.real_path(self.root / self.output_dir / folder)
            answer = resolved is not None and resolved.is_relative_to(self.target)
            self._answers[folder] = answer
        return answer


class _CachedRenderer:
    """Renders templates, reusing a result when the names a template reads are unchanged.

    A 10,000-render matrix repeats most field values; keying on only the names each
    template reads turns most renders into a dictionary lookup.
    """

    def __init__(self, templates: Templates) -> None:
        self.templates = templates
        self._results: dict[tuple[Hashable, ...], str] = {}
        # text → None for plain strings, () for templates that include others (never
        # cached), else the sorted names the template reads.
        self._names: dict[str, tuple[str, ...] | None] = {}
        # Set when a template read `shot` (its index moves when shots before it change)
        # or included another (which may read anything); the plan cache reads and resets it.
        self.reads_shot = False

    def render(
        self,
        sourced: SourcedShot,
        text: str,
        field: str,
        context: Mapping[str, Any],
        render_id: str | None = None,
    ) -> str:
        try:
            names = self._names[text]
        except KeyError:
            names = self._learn(sourced, text, field, render_id)
        if names is None:
            return text
        if not names or "shot" in names:
            self.reads_shot = True
        key = _cache_key(text, names, context) if names else None
        if key is not None:
            cached = self._results.get(key)
            if cached is not None:
                return cached
        try:
            result = self.templates.render(text, context)
        except TemplateProblem as problem:
            raise _template_error(problem, sourced, field, render_id) from None
        if key is not None:
            self._results[key] = result
        return result

    def _learn(
        self, sourced: SourcedShot, text: str, field: str, render_id: str | None
    ) -> tuple[str, ...] | None:
        names: tuple[str, ...] | None = None
        if self.templates.is_template(text):
            try:
                used = self.templates.names_used(text)
            except TemplateProblem as problem:
                raise _template_error(problem, sourced, field, render_id) from None
            names = () if used is None else tuple(sorted(used))
        self._names[text] = names
        return names

    def render_value(
        self,
        sourced: SourcedShot,
        value: Any,
        field: str,
        context: Mapping[str, Any],
        render_id: str,
    ) -> Any:
        if isinstance(value, str):
            return self.render(sourced, value, field, context, render_id)
        if isinstance(value, list):
            return [self.render_value(sourced, item, field, context, render_id) for item in value]
        return value


def _template_error(
    problem: TemplateProblem, sourced: SourcedShot, field: str, render_id: str | None
) -> UserError:
    template = problem.partial or "the template"
    where = f" (line {problem.line} of {template})" if problem.line else ""
    return UserError(
        problem.message + where, file=sourced.file, shot=render_id or sourced.shot.id, field=field
    )


def _cache_key(
    text: str, names: tuple[str, ...], context: Mapping[str, Any]
) -> tuple[Hashable, ...]:
    # The type is part of the key: 1, 1.0 and True are equal but render differently; so is
    # the text of a value equal values of its type may print otherwise (below).
    values = [context.get(name, _MISSING) for name in names]
    key: tuple[Hashable, ...] = (text, *[_part(v) for v in values])
    try:
        hash(key)
    except TypeError:
        key = (text, *[_hashable(v) for v in values])
    return key


# Types of which equal values may print differently: 0.0 and -0.0; two datetimes of one
# instant in different time zones; Decimal("1.0") and Decimal("1.00").
_PRINTED_OTHERWISE = (float, Decimal, date, time)


def _part(value: Any) -> Hashable:
    if isinstance(value, _PRINTED_OTHERWISE):
        return (type(value), value, repr(value))
    return (type(value), value)


def _hashable(value: Any) -> Hashable:
    try:
        hash(value)
    except TypeError:
        # Only vars and matrix entries are unhashable (lists, tables), and they live for
        # the whole expansion, so their identity cannot be reused by another object.
        return (type(value), "id", id(value))
    return _part(value)


_MISSING = object()
