"""`kling-batch review`: write the static gallery (and a contact sheet) of a manifest's renders.

A pure function of the manifest, the lockfile and the files: it plans (no network), lays the
plan out, reads poster frames from the videos and writes `index.html` beside them.
"""

from __future__ import annotations

import webbrowser
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kling_batch import ui
from kling_batch.atomic import atomic_write
from kling_batch.errors import RunError, UserError
from kling_batch.gallery import Gallery, build_gallery
from kling_batch.gallery_html import Links, render_page
from kling_batch.picks import read_picks
from kling_batch.plan import Plan, build_plan
from kling_batch.posters import POSTER_FOLDER, REVIEW_EXTRA, missing_review_extra, write_posters
from kling_batch.safefiles import lies_inside, real_path

PAGE = "index.html"


@dataclass(frozen=True)
class ReviewRequest:
    """Everything the `review` command was asked to do."""

    manifest: Path
    emulator: bool = False
    out: Path | None = None
    open_browser: bool = False
    rows: str | None = None
    cols: str | None = None
    sheet: Path | None = None


def review_command(request: ReviewRequest) -> Path:
    """Write the gallery (and the sheet, if asked); returns the page's path."""
    missing = missing_review_extra()
    _check_sheet(request.sheet, missing)
    plan = build_plan(request.manifest, now=datetime.now(UTC), emulator=request.emulator)
    gallery = build_gallery(
        plan,
        picks=read_picks(request.manifest),
        rows=request.rows,
        cols=request.cols,
        emulator=request.emulator,
    )
    if request.sheet is not None:
        from kling_batch.sheet import check_sheet_size

        check_sheet_size(gallery)
    out_dir = request.out or _default_out(plan)
    links = Links(gallery.root, out_dir)
    playable = _playable(gallery, links)
    page = out_dir / PAGE
    try:
        posters = _posters(playable, gallery.root, out_dir, missing)
        atomic_write(page, render_page(gallery, links, posters, str(request.manifest)))
    except OSError as exc:
        raise RunError(f"cannot write the gallery in {out_dir}: {exc}") from None
    ui.say(_summary(gallery, page))
    if request.sheet is not None:
        from kling_batch.sheet import write_sheet

        write_sheet(gallery, playable, request.sheet)
        ui.say(f"Contact sheet: {request.sheet}")
    if request.open_browser and not webbrowser.open(page.resolve().as_uri()):
        ui.say(f"note: no browser to open; open {page} by hand")
    return page


def _default_out(plan: Plan) -> Path:
    """`<output_dir>/review`, refused when it or its posters folder is a link, or leads
    out of the output folder, itself in the project: a repository may ship such a link,
    and the gallery would be written (and old posters swept) wherever it leads."""
    root, output_dir = plan.loaded.root, plan.loaded.manifest.output_dir.rstrip("/")
    base, project = real_path(root / output_dir), real_path(root)
    in_project = base is not None and project is not None and base.is_relative_to(project)
    for folder in (f"{output_dir}/review", f"{output_dir}/review/{POSTER_FOLDER}"):
        if (root / folder).is_symlink() or not (
            in_project and lies_inside(root, output_dir, folder)
        ):
            raise UserError(
                f"{folder} is a link or leads out of the output folder; review writes "
                "nothing through it: remove it, or pass --out to write the gallery elsewhere",
                file=plan.loaded.path,
            )
    return root / output_dir / "review"


def _check_sheet(sheet: Path | None, missing: str | None) -> None:
    """Refuse `--sheet` before any work when it cannot be written."""
    if sheet is None:
        return
    if sheet.suffix.lower() != ".png":
        raise UserError(f"--sheet {str(sheet)!r} must name a .png file")
    if missing is not None:
        raise UserError(f"--sheet needs the review extra ({missing} is missing): {REVIEW_EXTRA}")


def _posters(
    playable: dict[str, Path], root: Path, out_dir: Path, missing: str | None
) -> dict[str, Path]:
    """Poster frames beside the page, or none (with a note) without the review extra."""
    if missing is not None:
        ui.say(f"note: no poster frames without the review extra: {REVIEW_EXTRA}")
        return {}
    posters, warnings = write_posters(playable, root, out_dir / POSTER_FOLDER)
    for warning in warnings:
        ui.warn(warning)
    return posters


def _playable(gallery: Gallery, links: Links) -> dict[str, Path]:
    """Render id → video file, for the cards whose video the page links."""
    return {
        card.id: card.video
        for card in gallery.cards
        if card.video is not None and links.href(card.video) is not None
    }


def _summary(gallery: Gallery, page: Path) -> str:
    totals = gallery.totals
    cancelled = f"{totals.cancelled} cancelled, " if totals.cancelled else ""
    return (
        f"Gallery of {totals.renders} renders ({totals.done} done, {totals.failed} failed, "
        f"{cancelled}{totals.picked} picked): {page}"
    )
