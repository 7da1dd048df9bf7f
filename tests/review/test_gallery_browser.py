"""The gallery in a real browser (Chromium through Playwright), opened from `file://`.

The product-launch example (plus a shot with markup in its prompt and one that failed) is
rendered once per session by `reviewed`; expected values come from the manifest and from
`kling-batch plan --format json`, never from the page itself.
"""

from __future__ import annotations

import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kling_batch.picks import read_picks
from tests.review.conftest import FAULT_CODE, MARKUP_PROMPT, MARKUP_TAG, Reviewed, kling_batch

PLANNED_SECONDS_TOLERANCE = 0.5


class Session:
    """A page with every request and dialog it caused recorded."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("dialog", self._dialog)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, page: Path) -> None:
        """Load a gallery from disk and wait until every video knows its length."""
        self.page.goto(page.as_uri())
        self.page.wait_for_function(
            "Array.from(document.querySelectorAll('video')).every(v => v.readyState >= 1)"
        )

    def visible_ids(self) -> set[str]:
        """Ids of the cards a person can see."""
        ids: list[str] = self.page.eval_on_selector_all(
            ".card", "cards => cards.filter(c => c.offsetParent !== null).map(c => c.dataset.id)"
        )
        return set(ids)


@pytest.fixture
def session(browser: Any) -> Iterator[Session]:
    """A fresh page in the shared browser."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    yield Session(page)
    page.close()


def manifest_shots(reviewed: Reviewed) -> list[dict[str, Any]]:
    """The copied manifest's shots, as written."""
    with open(reviewed.manifest, "rb") as f:
        shots: list[dict[str, Any]] = tomllib.load(f)["shots"]
    return shots


def slug(text: str) -> str:
    """The example's `slug` filter for its plain product names."""
    return text.lower().replace(" ", "-")


def test_every_video_loads_with_its_planned_length(reviewed: Reviewed, session: Session) -> None:
    """Each render's <video> loads its metadata and lasts its planned seconds (±0.5 s)."""
    planned = reviewed.plan(emulator=True)
    session.open(reviewed.emulator_page)
    durations: dict[str, float] = dict(
        session.page.eval_on_selector_all(
            ".card video.render",
            "videos => videos.map(v => [v.closest('.card').dataset.id, v.duration])",
        )
    )
    assert set(durations) == set(planned)
    for render_id, seconds in durations.items():
        expected = planned[render_id]["seconds"]
        assert abs(seconds - expected) <= PLANNED_SECONDS_TOLERANCE, render_id


def test_grid_headings_are_the_matrix_axes(
    reviewed: Reviewed, session: Session, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rows and columns carry the matrix values, and each cell holds that combination's takes."""
    teaser = manifest_shots(reviewed)[0]
    products, tiers = teaser["matrix"]["product"], teaser["matrix"]["model_tier"]
    session.open(reviewed.emulator_page)
    table = session.page.locator("section.shot").first.locator("table.grid")
    # Equal counts: the first declared axis becomes the rows.
    assert table.get_attribute("data-row-axis") == "product"
    assert table.get_attribute("data-col-axis") == "model_tier"
    assert table.locator("th.row-head .row-label").all_inner_texts() == products
    assert table.locator("th.col-head").all_inner_texts() == tiers
    rows = table.locator("tr.grid-row")
    for r, product in enumerate(products):
        cells = rows.nth(r).locator("td.cell")
        for c, tier in enumerate(tiers):
            ids = cells.nth(c).locator(".card").evaluate_all("cs => cs.map(c => c.dataset.id)")
            takes = range(1, teaser["takes"] + 1)
            assert ids == [f"teaser-{slug(product)}-{tier}-take{t}" for t in takes]
    screenshot = tmp_path / "gallery.png"
    session.page.screenshot(path=str(screenshot), full_page=True)
    with capsys.disabled():
        print(f"\ngallery screenshot: {screenshot}")
    assert screenshot.stat().st_size > 10_000


def test_filters_by_state_text_and_tag(reviewed: Reviewed, session: Session) -> None:
    """State, text and tag filters show exactly the matching cards; clearing shows all again."""
    planned = reviewed.plan(emulator=False)
    session.open(reviewed.real_page)
    page = session.page
    assert session.visible_ids() == set(planned)

    page.select_option("#filter-state", "failed")
    assert session.visible_ids() == {"doomed"}
    page.select_option("#filter-state", "new")
    assert session.visible_ids() == {i for i, s in planned.items() if s["action"] == "new"}

    page.select_option("#filter-state", "")
    page.fill("#filter-text", "Rain JACKET")
    prompts = {i: s["request"]["prompt"].lower() for i, s in planned.items()}
    assert session.visible_ids() == {i for i, p in prompts.items() if "rain jacket" in p}

    page.fill("#filter-text", "")
    page.select_option("#filter-tag", "hero")
    hero_tagged = {i for i in planned if i.startswith("hero-")}
    assert session.visible_ids() == hero_tagged
    page.select_option("#filter-tag", "two words")
    assert session.visible_ids() == {"doomed"}

    page.select_option("#filter-tag", "")
    assert session.visible_ids() == set(planned)


def test_failed_render_shows_its_reason(reviewed: Reviewed, session: Session) -> None:
    """The render failed by the emulator fault is a placeholder that says why."""
    session.open(reviewed.real_page)
    card = session.page.locator('.card[data-id="doomed"]')
    assert card.get_attribute("data-state") == "failed"
    assert card.locator("video").count() == 0
    reason = card.locator(".placeholder .reason").inner_text()
    assert FAULT_CODE in reason
    assert card.locator(".placeholder").is_visible()


def test_markup_in_a_prompt_is_shown_as_text(reviewed: Reviewed, session: Session) -> None:
    """A `<script>` in a prompt (and markup in a tag) shows as text; no dialog ever opens."""
    session.open(reviewed.emulator_page)
    page = session.page
    card = page.locator('.card[data-id="sign"]')
    card.locator("video").hover()
    assert card.locator("ol.scenes").inner_text().strip().endswith(MARKUP_PROMPT)
    assert card.locator("ul.tags li").all_inner_texts() == [MARKUP_TAG]
    assert card.locator("ul.tags b, ol.scenes script").count() == 0
    assert page.evaluate("document.scripts.length") == 1
    assert session.dialogs == []


def test_no_request_leaves_the_project_folder(reviewed: Reviewed, session: Session) -> None:
    """Loading the page and playing every row asks only for files of the project."""
    session.open(reviewed.emulator_page)
    page = session.page
    for button in page.locator("button.sync").all():
        button.click()
    page.wait_for_function(
        "Array.from(document.querySelectorAll('.grid-row video.render'))"
        ".filter(v => v.closest('.grid-row').querySelector('button.sync'))"
        ".every(v => !v.paused || v.ended)"
    )
    folder = reviewed.root.as_uri() + "/"
    outside = [url for url in session.requests if not url.startswith(folder)]
    assert outside == []
    videos = {
        (reviewed.root / shot["output"]).as_uri() for shot in reviewed.plan(emulator=True).values()
    }
    assert videos <= set(session.requests)


def test_play_row_in_sync_plays_that_row_only(reviewed: Reviewed, session: Session) -> None:
    """The row button starts every video of its row together; other rows stay paused."""
    session.open(reviewed.emulator_page)
    page = session.page
    rows = page.locator("section.shot").first.locator("tr.grid-row")
    rows.nth(1).locator("button.sync").click()
    playing = "row => Array.from(row.querySelectorAll('video.render')).map(v => !v.paused)"
    page.wait_for_function(
        "Array.from(document.querySelectorAll('section.shot:first-of-type tr.grid-row')[1]"
        ".querySelectorAll('video.render')).every(v => !v.paused)"
    )
    assert all(rows.nth(1).evaluate(playing))
    assert not any(rows.nth(0).evaluate(playing))


def test_keys_move_between_cards_and_star_one(reviewed: Reviewed, session: Session) -> None:
    """j/k move the focus through the cards in order; s stars the focused one."""
    session.open(reviewed.emulator_page)
    page = session.page
    order = page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.id)")
    focused = "() => document.activeElement.dataset.id"
    page.keyboard.press("j")
    assert page.evaluate(focused) == order[0]
    page.keyboard.press("j")
    page.keyboard.press("j")
    assert page.evaluate(focused) == order[2]
    page.keyboard.press("k")
    assert page.evaluate(focused) == order[1]
    page.keyboard.press("s")
    assert (
        page.locator(f'.card[data-id="{order[1]}"]').get_attribute("class").split().count("picked")
    )
    assert page.locator("#pick-bar").is_visible()
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "filter-text"


def test_star_builds_the_pick_command_that_records_it(reviewed: Reviewed, session: Session) -> None:
    """A star's command, run as shown, records the pick; the regenerated gallery highlights it."""
    session.open(reviewed.emulator_page)
    page = session.page
    target = "hero-rain-jacket"
    page.locator(f'.card[data-id="{target}"] button.star').click()
    command = page.locator("#pick-command").inner_text()
    assert command == f"kling-batch pick {shlex.quote(str(reviewed.manifest))} {target}"
    try:
        _run_shown(command)
        assert kling_batch("review", str(reviewed.manifest), "--emulator").returncode == 0
        session.open(reviewed.emulator_page)
        card = page.locator(f'.card[data-id="{target}"]')
        assert "picked" in card.get_attribute("class").split()
        assert page.locator('[data-total="picked"]').inner_text() == "1"
        card.locator("button.star").click()
        unpick = page.locator("#pick-command").inner_text()
        assert unpick == f"kling-batch pick --unpick {shlex.quote(str(reviewed.manifest))} {target}"
        _run_shown(unpick)
        assert read_picks(reviewed.manifest) == frozenset()
    finally:
        reviewed.manifest.with_name("launch.picks.toml").unlink(missing_ok=True)
        kling_batch("review", str(reviewed.manifest), "--emulator")


def _run_shown(command: str) -> None:
    argv = shlex.split(command)
    assert argv[0] == "kling-batch"
    result = kling_batch(*argv[1:])
    assert result.returncode == 0, result.stderr


def test_hovering_a_video_plays_it_muted(reviewed: Reviewed, session: Session) -> None:
    """Pointing at a video plays it without sound; moving away pauses it."""
    session.open(reviewed.emulator_page)
    page = session.page
    video = page.locator('.card[data-id="hero-trail-shoe"] video.render')
    video.hover()
    handle = video.element_handle()
    page.wait_for_function("v => !v.paused", arg=handle)
    assert video.evaluate("v => v.muted")
    page.mouse.move(1, 1)
    page.wait_for_function("v => v.paused", arg=handle)


def test_input_images_show_as_thumbnails(reviewed: Reviewed, session: Session) -> None:
    """Each card shows its input images, loaded from the project's files."""
    session.open(reviewed.emulator_page)
    page = session.page
    for render_id, shot in reviewed.plan(emulator=True).items():
        wanted = [shot["request"][f] for f in ("image", "image_end") if f in shot["request"]]
        images = page.locator(f'.card[data-id="{render_id}"] .inputs img')
        assert images.evaluate_all("is => is.map(i => i.alt)") == wanted
        for n in range(images.count()):
            images.nth(n).scroll_into_view_if_needed()
            page.wait_for_function(
                "i => i.complete && i.naturalWidth > 0", arg=images.nth(n).element_handle()
            )
