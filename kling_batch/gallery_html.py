"""The gallery as one static HTML page: CSS and script inline, media by relative paths.

Every text from the manifest or the lockfile goes through `escape`; a Content Security
Policy allows only this page's own script and style (by hash) and local media, so a prompt
holding markup shows as text and nothing is fetched from a network.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import shlex
from collections.abc import Iterable, Mapping
from datetime import UTC
from decimal import Decimal
from importlib import resources
from pathlib import Path, PurePath
from urllib.parse import quote

from kling_batch.gallery import STATES, Card, Gallery, Grid, InputMedia, Section
from kling_batch.reports import seconds_text, usd

_ASPECT_CLASS = {"16:9": "aspect-16x9", "1:1": "aspect-1x1", "9:16": "aspect-9x16"}


def escape(value: object) -> str:
    """Text safe inside an element or a double-quoted attribute."""
    return html.escape(str(value), quote=True)


class Links:
    """Relative URLs from the page's folder; never to a file outside the manifest's folder."""

    def __init__(self, root: Path, page_dir: Path) -> None:
        self.root = root.resolve()
        self.page_dir = page_dir.resolve()

    def href(self, target: Path) -> str | None:
        """A URL for `target`, or None when it is missing or lies outside the manifest's
        folder (a symlink or a lockfile path leading out is never linked)."""
        try:
            resolved = target.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not resolved.is_relative_to(self.root) or not resolved.is_file():
            return None
        return self.relative(resolved)

    def relative(self, resolved: Path) -> str:
        """A URL for a file the page owns (its posters), relative to the page."""
        parts = PurePath(os.path.relpath(resolved, self.page_dir)).parts
        return "/".join(quote(part, safe="") for part in parts)


def render_page(
    gallery: Gallery, links: Links, posters: Mapping[str, Path], manifest_arg: str
) -> str:
    """The whole page; `manifest_arg` is the manifest as the pick command should name it."""
    css = _static("gallery.css")
    script = _static("gallery.js")
    title = f"{gallery.name}: kling-batch review"
    body = [
        _top(gallery),
        "<main>",
        *(_section(number, s, links, posters) for number, s in enumerate(gallery.sections, 1)),
        _orphans(gallery.orphans),
        "</main>",
        _pick_bar(),
        _footer(gallery),
    ]
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{_policy(css, script)}">',
            '<meta name="referrer" content="no-referrer">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape(title)}</title>",
            f"<style>{css}</style>",
            "</head>",
            f'<body data-pick-command="kling-batch pick" '
            f'data-manifest="{escape(shlex.quote(manifest_arg))}">',
            *body,
            f"<script>{script}</script>",
            "</body>",
            "</html>",
            "",
        ]
    )


def _static(name: str) -> str:
    return (resources.files("kling_batch") / "review_static" / name).read_text(encoding="utf-8")


def _policy(css: str, script: str) -> str:
    """Only this page's script and style run; media and images come from files, not a network."""

    def digest(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    return (
        f"default-src 'none'; script-src {digest(script)}; style-src {digest(css)}; "
        "img-src 'self' file:; media-src 'self' file:; base-uri 'none'; form-action 'none'"
    )


def _top(gallery: Gallery) -> str:
    totals = gallery.totals
    source = gallery.manifest.name + (" · emulator renders" if gallery.emulator else "")
    counts = [
        ("renders", str(totals.renders), "renders"),
        ("done", str(totals.done), "done"),
        ("failed", str(totals.failed), "failed"),
        *([("cancelled", str(totals.cancelled), "cancelled")] if totals.cancelled else []),
        ("spent", usd(totals.spent), "spent"),
        ("picked", str(totals.picked), "picked"),
    ]
    items = "".join(
        f'<li><b data-total="{key}">{escape(value)}</b> {label}</li>'
        for key, value, label in counts
    )
    estimate = f'<li class="muted">plan estimate {escape(usd(totals.estimate))}</li>'
    states = "".join(
        f'<option value="{state}">{state} ({totals.by_state[state]})</option>'
        for state in STATES
        if totals.by_state[state]
    )
    tags = "".join(f'<option value="{escape(t)}">{escape(t)}</option>' for t in gallery.tags)
    return f"""<header class="top">
<h1>{escape(gallery.name)}<span class="sub">{escape(source)}</span></h1>
<ul class="totals">{items}{estimate}</ul>
<div class="filters" role="search">
<input type="search" id="filter-text" placeholder="Filter by id, prompt, tag, reason…" aria-label="Filter by text">
<select id="filter-state" aria-label="State"><option value="">every state</option>{states}</select>
<select id="filter-tag" aria-label="Tag"><option value="">every tag</option>{tags}</select>
<label><input type="checkbox" id="filter-picked"> picked only</label>
<span id="shown" class="muted">{totals.renders} of {totals.renders} shown</span>
</div>
<p class="keys"><kbd>j</kbd>/<kbd>k</kbd> or <kbd>←</kbd>/<kbd>→</kbd> next/previous render · <kbd>space</kbd> play/pause · <kbd>s</kbd> star · <kbd>/</kbd> filter · <kbd>Esc</kbd> clear</p>
</header>"""  # noqa: E501


def _section(number: int, section: Section, links: Links, posters: Mapping[str, Path]) -> str:
    cards = section.cards
    meta = [section.source, f"{len(cards)} render{'s' if len(cards) != 1 else ''}"]
    if section.row_axis:
        meta.append(f"rows: {section.row_axis}")
    if section.col_axis:
        meta.append(f"columns: {section.col_axis}")
    if section.extra_axes:
        meta.append("also: " + ", ".join(section.extra_axes))
    if section.takes > 1:
        meta.append(f"{section.takes} takes side by side")
    grids = "\n".join(_grid(section, grid, links, posters) for grid in section.grids)
    return (
        f'<section class="shot" id="shot-{number}" data-shot="{escape(section.title)}">\n'
        f"<h2><code>{escape(section.title)}</code></h2>\n"
        f'<p class="section-meta">{escape(" · ".join(meta))}</p>\n{grids}\n</section>'
    )


def _grid(section: Section, grid: Grid, links: Links, posters: Mapping[str, Path]) -> str:
    heading = f'<h3 class="subheading">{escape(grid.heading)}</h3>' if grid.heading else ""
    head = ""
    if section.col_axis:
        corner = f'<span class="axis">{escape(section.row_axis or "")}</span> ╲ '
        corner += f'<span class="axis">{escape(section.col_axis)}</span>'
        cols = "".join(f'<th class="col-head" scope="col">{escape(c)}</th>' for c in grid.cols)
        head = f'<thead><tr><th class="corner" scope="col">{corner}</th>{cols}</tr></thead>'
    elif section.row_axis:
        corner = f'<span class="axis">{escape(section.row_axis)}</span>'
        head = f'<thead><tr><th class="corner" scope="col">{corner}</th><th></th></tr></thead>'
    rows = "\n".join(_row(grid, index, links, posters) for index in range(len(grid.rows)))
    axes = f'data-row-axis="{escape(section.row_axis or "")}" '
    axes += f'data-col-axis="{escape(section.col_axis or "")}"'
    return (
        f'<div class="grid-block">{heading}\n<table class="grid" {axes}>{head}\n'
        f"<tbody>\n{rows}\n</tbody></table></div>"
    )


def _row(grid: Grid, index: int, links: Links, posters: Mapping[str, Path]) -> str:
    label = grid.rows[index]
    sync = ""
    if len(grid.row_cards(index)) > 1:
        sync = '<button type="button" class="sync" title="Play every video of this row together">'
        sync += "▶ play row in sync</button>"
    head = f'<th class="row-head" scope="row"><span class="row-label">{escape(label)}</span>'
    head += f"{sync}</th>"
    cells = []
    for col in range(len(grid.cols)):
        takes = "".join(_card(card, links, posters) for card in grid.cells.get((index, col), ()))
        cells.append(f'<td class="cell"><div class="takes">{takes}</div></td>')
    return f'<tr class="grid-row">{head}{"".join(cells)}</tr>'


def _card(card: Card, links: Links, posters: Mapping[str, Path]) -> str:
    classes = ["card", f"state-{card.state}", _ASPECT_CLASS.get(card.aspect, "aspect-16x9")]
    if card.picked:
        classes.append("picked")
    attrs = {
        "class": " ".join(classes),
        "id": f"render-{card.id}",
        "tabindex": "0",
        "data-id": card.id,
        "data-state": card.state,
        "data-tags": json.dumps(list(card.tags), ensure_ascii=False),
        "data-seconds": seconds_text(card.seconds).removesuffix("s"),
        "data-picked": "true" if card.picked else "false",
        "data-search": search_text(card),
    }
    opening = " ".join(f'{name}="{escape(value)}"' for name, value in attrs.items())
    star = "★" if card.picked else "☆"
    coords = " · ".join(f"{key}: {value}" for key, value in card.coords)
    return "".join(
        [
            f"<article {opening}>",
            _media(card, links, posters),
            '<div class="card-head">',
            f'<button type="button" class="star" aria-pressed="{str(card.picked).lower()}" '
            f'title="Pick (s)">{star}</button>',
            f'<span class="state">{escape(card.state)}</span>',
            f'<span class="take">take {card.take}</span></div>' if card.take > 1 else "</div>",
            f'<p class="id">{escape(card.id)}</p>',
            f'<p class="coords">{escape(coords)}</p>' if coords else "",
            _scenes(card),
            _facts(card),
            _inputs(card.inputs, links),
            _tags(card.tags),
            "</article>",
        ]
    )


def search_text(card: Card) -> str:
    """What the text filter searches: id, state, reason, prompt, tags, matrix values, job."""
    words = [card.id, card.state, card.reason, card.tier, card.workflow, card.job_id or ""]
    words.extend(text for text, _ in card.scenes)
    words.extend(card.tags)
    words.extend(f"{key} {value}" for key, value in card.coords)
    return " ".join(words).lower()


def _media(card: Card, links: Links, posters: Mapping[str, Path]) -> str:
    href = links.href(card.video) if card.video is not None else None
    if href is None:
        reason = card.reason or (
            "the output file is outside the manifest's folder, so it is not linked"
            if card.video is not None
            else ""
        )
        return (
            f'<div class="media placeholder"><p class="badge">{escape(card.state)}</p>'
            f'<p class="reason">{escape(reason)}</p></div>'
        )
    poster = posters.get(card.id)
    poster_attr = f' poster="{escape(links.relative(poster.resolve()))}"' if poster else ""
    video = (
        f'<video class="render" controls preload="metadata" muted playsinline '
        f'src="{escape(href)}"{poster_attr}></video>'
    )
    note = f'<p class="note">{escape(card.reason)}</p>' if card.reason else ""
    return f'<div class="media">{video}</div>{note}'


def _scenes(card: Card) -> str:
    items = "".join(f"<li>{_secs(seconds)}{escape(text)}</li>" for text, seconds in card.scenes)
    return f'<ol class="scenes" aria-label="prompt">{items}</ol>'


def _secs(seconds: Decimal | None) -> str:
    if seconds is None:
        return ""
    return f'<span class="secs">{escape(seconds_text(seconds))}</span>'


def _facts(card: Card) -> str:
    rendered = (
        card.rendered_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if card.rendered_at else "–"
    )
    facts = [
        ("tier", card.tier),
        ("workflow", card.workflow),
        ("aspect", card.aspect),
        ("seconds", seconds_text(card.seconds)),
        ("estimate", usd(card.cost)),
        ("billed", _money(card.billed)),
        ("job", card.job_id or "–"),
        ("rendered", rendered),
    ]
    items = "".join(f"<dt>{name}</dt><dd>{escape(value)}</dd>" for name, value in facts)
    return f'<dl class="facts">{items}</dl>'


def _money(amount: Decimal | None) -> str:
    return usd(amount) if amount is not None else "–"


def _inputs(inputs: Iterable[InputMedia], links: Links) -> str:
    parts = []
    for media in inputs:
        href = links.href(media.path) if media.path is not None else None
        caption = f"<figcaption>{escape(media.field)}</figcaption>"
        if href is not None and media.kind == "image":
            image = (
                f'<img src="{escape(href)}" alt="{escape(media.ref)}" title="{escape(media.ref)}">'
            )
            parts.append(f"<figure>{image}{caption}</figure>")
        elif href is not None and media.kind == "video":
            video = (
                f'<video class="input" controls preload="metadata" muted src="{escape(href)}" '
                f'title="{escape(media.ref)}"></video>'
            )
            parts.append(f"<figure>{video}{caption}</figure>")
        else:
            text = f"{media.field}: {media.ref}"
            parts.append(f'<span class="remote" title="not loaded">{escape(text)}</span>')
    return f'<div class="inputs">{"".join(parts)}</div>' if parts else ""


def _tags(tags: Iterable[str]) -> str:
    items = "".join(f"<li>{escape(tag)}</li>" for tag in tags)
    return f'<ul class="tags">{items}</ul>' if items else ""


def _orphans(orphans: Iterable[str]) -> str:
    names = ", ".join(orphans)
    if not names:
        return ""
    return (
        '<p class="orphans">In the lockfile but no longer in the manifest: '
        f"<code>{escape(names)}</code></p>"
    )


def _pick_bar() -> str:
    return (
        '<aside id="pick-bar" hidden><p>A page cannot save files. To record these picks, run:</p>'
        '<pre id="pick-command"></pre><button type="button" id="pick-copy">Copy</button></aside>'
    )


def _footer(gallery: Gallery) -> str:
    return (
        f"<footer>Made by <code>kling-batch review</code> from {escape(gallery.manifest.name)} "
        f"and {escape(gallery.lock.name)}. Videos and images are files of the project, read "
        "by relative path; nothing is fetched from a network.</footer>"
    )
