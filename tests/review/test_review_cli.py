"""`kling-batch review` from the command line: layout, placeholders, escaping, safety, errors.

These need no browser: the page is read with the standard library's HTML parser.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest

from kling_batch.canonical import sha256_file
from kling_batch.gallery import build_gallery
from kling_batch.lockfile import Lockfile, new_entry
from kling_batch.plan import build_plan
from tests.review.conftest import Reviewed, kling_batch

Project = Callable[..., Path]
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


class Page(HTMLParser):
    """Elements of a gallery page: tags with attributes, and text by enclosing class."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.texts: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.texts.append(data)

    def tags(self, name: str) -> list[dict[str, str | None]]:
        """Attributes of every `name` element."""
        return [attrs for tag, attrs in self.elements if tag == name]

    def cards(self) -> dict[str, dict[str, str | None]]:
        """Card attributes by render id."""
        return {
            str(a["data-id"]): a
            for a in self.tags("article")
            if "card" in (a.get("class") or "").split()
        }


def review(manifest: Path, *args: str, env: dict[str, str] | None = None) -> Page:
    """Run `review` (must succeed) and parse the page it wrote."""
    result = kling_batch("review", str(manifest), *args, env=env)
    assert result.returncode == 0, result.stderr
    return Page(Path(result.stdout.strip()).read_text(encoding="utf-8"))


def one_line_error(result: object) -> str:
    """The single stderr line of a refused command (exit 2, no traceback)."""
    assert getattr(result, "returncode", None) == 2
    lines = getattr(result, "stderr", "").strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return str(lines[0])


THREE_AXES = """
[[shots]]
id = "spot-{{ place }}-{{ light }}-{{ lens }}"
prompt = "a {{ light }} {{ place }} through a {{ lens }} lens"
matrix = { lens = ["wide", "tele"], place = ["dock", "hill", "mill"], light = ["dawn", "dusk"] }

[[shots]]
id = "plain"
prompt = "4s: fog | 5s: sun"
takes = 3
"""


def test_axes_default_to_most_values_as_rows(project: Project) -> None:
    """The axis with most values is the rows, the next the columns, the rest sub-headings."""
    plan = build_plan(project(THREE_AXES), now=NOW)
    spot, plain = build_gallery(plan).sections
    assert (spot.row_axis, spot.col_axis, spot.extra_axes) == ("place", "lens", ("light",))
    assert [g.heading for g in spot.grids] == ["light: dawn", "light: dusk"]
    assert spot.grids[0].rows == ("dock", "hill", "mill")
    assert spot.grids[0].cols == ("wide", "tele")
    assert [c.id for c in spot.grids[1].cells[(2, 1)]] == ["spot-mill-dusk-tele"]
    assert (plain.row_axis, plain.col_axis) == (None, None)
    assert [c.id for c in plain.grids[0].cells[(0, 0)]] == [f"plain-take{n}" for n in (1, 2, 3)]
    assert list(plain.cards[0].scenes) == [("fog", 4), ("sun", 5)]


def test_rows_and_cols_options_choose_the_axes(project: Project) -> None:
    """`--rows light --cols place` lays those axes out; the page's headings follow."""
    page = review(project(THREE_AXES), "--rows", "light", "--cols", "place")
    tables = page.tags("table")
    assert tables[0]["data-row-axis"] == "light"
    assert tables[0]["data-col-axis"] == "place"
    assert "lens: wide" in page.texts and "lens: tele" in page.texts


def test_unknown_axis_is_refused_in_one_line(project: Project) -> None:
    """An axis no shot has exits 2 with one line naming it and the axes there are."""
    result = kling_batch("review", str(project(THREE_AXES)), "--rows", "tier")
    line = one_line_error(result)
    assert "'tier'" in line and "lens" in line and "manifest.toml" in line


def test_bad_manifest_is_refused_in_one_line(project: Project) -> None:
    """A manifest mistake exits 2 with one line naming the file, the shot and the field."""
    manifest = project('[[shots]]\nid = "a"\nprompt = "x"\nduraton = 5\n')
    line = one_line_error(kling_batch("review", str(manifest)))
    assert "manifest.toml" in line and "'a'" in line and "duraton" in line


def test_not_rendered_renders_are_placeholders_with_reasons(project: Project) -> None:
    """With no lockfile every render is a `new` placeholder saying it is not rendered yet."""
    page = review(project(THREE_AXES))
    plan = build_plan(project(THREE_AXES), now=NOW)
    cards = page.cards()
    assert set(cards) == {item.render.id for item in plan.items}
    assert {c["data-state"] for c in cards.values()} == {"new"}
    assert page.tags("video") == []
    assert page.texts.count("not rendered yet") == len(plan.items)


def test_markup_from_the_manifest_is_escaped(project: Project) -> None:
    """Prompts, tags and matrix values holding markup appear as text, never as elements."""
    manifest = project(
        """
        [[shots]]
        id = "x-{{ n | length }}"
        prompt = '<script>alert(1)</script> " onmouseover="alert(2)'
        matrix = { n = ["<i>1</i>", "2"] }
        tags = ["<img src=x onerror=alert(3)>"]
        """
    )
    page = review(manifest)
    assert [tag for tag, _ in page.elements if tag in {"script", "img", "i"}] == ["script"]
    assert '<script>alert(1)</script> " onmouseover="alert(2)' in page.texts
    assert "<img src=x onerror=alert(3)>" in page.texts
    assert "<i>1</i>" in page.texts
    assert not any("onmouseover" in attrs or "onerror" in attrs for _, attrs in page.elements)


def test_outputs_outside_the_manifest_folder_are_never_linked(project: Project) -> None:
    """A finished render whose file is a symlink out of the project gets no link."""
    manifest = project('[[shots]]\nid = "a"\nprompt = "a harbour"\n')
    root = manifest.parent
    outside = root.parent / f"{root.name}-outside.mp4"
    outside.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    (root / "renders").mkdir()
    (root / "renders" / "a.mp4").symlink_to(outside)
    plan = build_plan(manifest, now=NOW)
    render = plan.items[0].render
    done = new_entry(
        render, "done", output_sha256=sha256_file(outside), output_size=outside.stat().st_size
    )
    Lockfile(shots={"a": done}).save(manifest.with_suffix(".lock"))
    page = review(manifest)
    assert page.cards()["a"]["data-state"] == "done"
    assert page.tags("video") == []
    hrefs = [a.get("src") or a.get("href") or "" for _, a in page.elements]
    assert not any("outside" in h or h.startswith(("/", "file:")) for h in hrefs)
    assert any("outside the manifest's folder" in text for text in page.texts)


def test_gallery_is_a_pure_function_of_its_inputs(project: Project) -> None:
    """Reviewing twice writes the same bytes, with no API key and an unreachable API."""
    manifest = project(THREE_AXES)
    env = {"EMPIRIOLABS_API_KEY": "", "EMPIRIOLABS_BASE_URL": "http://192.0.2.1:9"}
    first = kling_batch("review", str(manifest), env=env)
    assert first.returncode == 0, first.stderr
    page = Path(first.stdout.strip())
    before = page.read_bytes()
    assert kling_batch("review", str(manifest), env=env).returncode == 0
    assert page.read_bytes() == before
    assert page == manifest.parent / "renders" / "review" / "index.html"


def test_open_hands_the_page_to_the_browser(project: Project, tmp_path: Path) -> None:
    """`--open` opens the page's file:// URL in the user's browser ($BROWSER)."""
    record = tmp_path / "opened.txt"
    opener = tmp_path / "browser.sh"
    opener.write_text(f'#!/bin/sh\necho "$1" > {record}\n')
    opener.chmod(opener.stat().st_mode | stat.S_IXUSR)
    manifest = project(THREE_AXES)
    result = kling_batch("review", str(manifest), "--open", env={"BROWSER": f"{opener} %s"})
    assert result.returncode == 0, result.stderr
    assert record.read_text().strip() == Path(result.stdout.strip()).resolve().as_uri()


BLOCK_EXTRA = (
    "import sys; sys.modules['PIL'] = None; sys.modules['av'] = None; "
    "sys.argv[0] = 'kling-batch'; from kling_batch.cli import main; main()"
)


def test_without_the_review_extra_the_gallery_has_no_posters(
    reviewed: Reviewed, tmp_path: Path
) -> None:
    """Without PyAV and Pillow the page is still written, with videos but no posters, and
    `--sheet` says in one line what to install."""
    manifest = str(reviewed.manifest)
    argv = [sys.executable, "-c", BLOCK_EXTRA, "review", manifest, "--emulator"]
    argv += ["--out", str(tmp_path / "gallery")]
    env = {**os.environ, "NO_COLOR": "1"}
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert "kling-batch[review]" in result.stderr
    videos = Page(Path(result.stdout.strip()).read_text()).tags("video")
    assert videos and not any("poster" in v for v in videos)
    assert not (tmp_path / "gallery" / "posters").exists()

    sheet = tmp_path / "sheet.png"
    refused = subprocess.run(
        [*argv, "--sheet", str(sheet)], capture_output=True, text=True, env=env, check=False
    )
    line = one_line_error(refused)
    assert "--sheet" in line and "pip install 'kling-batch[review]'" in line
    assert not sheet.exists()


def test_inputs_are_thumbnails_small_players_or_text(
    project: Project, image: Callable[[str], Path], clip: Callable[[str, str], Path]
) -> None:
    """Local images become thumbnails, local videos small players, URLs plain text."""
    image("assets/still.png")
    clip("street.mp4", "clips/street.mp4")
    manifest = project(
        """
        [[shots]]
        id = "still"
        prompt = "a harbour"
        image = "assets/still.png"

        [[shots]]
        id = "look"
        prompt = "a harbour in this look"
        reference_images = ["https://example.com/look.png"]

        [[shots]]
        id = "edit"
        prompt = "make it rain"
        video = "clips/street.mp4"
        """
    )
    page = review(manifest)
    assert [i["src"] for i in page.tags("img")] == ["../../assets/still.png"]
    inputs = [v for v in page.tags("video") if v.get("class") == "input"]
    assert [v["src"] for v in inputs] == ["../../clips/street.mp4"]
    assert "reference_images[0]: https://example.com/look.png" in page.texts
    assert not any("example.com" in (a.get("src") or "") for _, a in page.elements)
    edit = build_gallery(build_plan(manifest, now=NOW)).sections[2].cards[0]
    assert edit.scenes == (("make it rain", None),)  # an edit lasts as long as its source
    assert edit.seconds == 6


def test_an_edited_shot_shows_its_earlier_render_as_outdated(
    reviewed: Reviewed, tmp_path: Path
) -> None:
    """After a prompt edit the card keeps the earlier video, marked outdated with the reason."""
    root = tmp_path / "project"
    shutil.copytree(reviewed.root, root, symlinks=True)
    manifest = root / reviewed.manifest.name
    text = manifest.read_text()
    assert text.count("a neon shop sign") == 1
    manifest.write_text(text.replace("a neon shop sign", "a paper shop sign"))
    page = review(manifest, "--emulator")
    card = page.cards()["sign"]
    assert card["data-state"] == "outdated"
    videos = [v for v in page.tags("video") if v.get("class") == "render"]
    assert "sign.mp4" in {Path(str(v["src"])).name for v in videos}
    assert "changed since it rendered: prompt changed" in page.texts


def test_review_writes_nothing_through_a_linked_review_folder(
    project: Project, tmp_path: Path
) -> None:
    """A repository shipping `renders/review` (or its posters folder) as a link elsewhere:
    `review` refuses in one line naming it, and writes or sweeps nothing there; `--out`
    still writes the gallery where the user says."""
    manifest = project('[[shots]]\nid = "a"\nprompt = "a calm sea"\n')
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    (elsewhere / "index.html").write_text("my own page")
    (elsewhere / "0123456789abcdef.jpg").write_bytes(b"my own picture")
    renders = manifest.parent / "renders"
    for folder in ("review", "review/posters"):
        if renders.exists():
            shutil.rmtree(renders)
        linked = renders / folder
        linked.parent.mkdir(parents=True)
        linked.symlink_to(elsewhere, target_is_directory=True)
        line = one_line_error(kling_batch("review", str(manifest)))
        assert f"renders/{folder} is a link" in line and "--out" in line
        assert sorted(p.name for p in elsewhere.iterdir()) == ["0123456789abcdef.jpg", "index.html"]
        assert (elsewhere / "index.html").read_text() == "my own page"
    page = review(manifest, "--out", str(tmp_path / "gallery"))
    assert page.cards().keys() == {"a"}


@pytest.mark.parametrize(
    ("field", "command"),
    [("billed_usd", "review"), ("cost_usd", "status")],
)
def test_an_amount_no_render_costs_is_refused_in_one_line(
    project: Project, field: str, command: str
) -> None:
    """A lockfile from a pull request saying a render cost $10^30: exit 2 in one line naming
    the shot and the field, like any damaged lockfile. Before, `review` (and `status`, for
    `cost_usd`) died with a traceback: the amount cannot be rounded to the tenth of a cent."""
    manifest = project('[[shots]]\nid = "a"\nprompt = "a calm sea"\n')
    plan = build_plan(manifest, now=NOW)
    output = manifest.parent / "renders" / "a.mp4"
    output.parent.mkdir()
    output.write_bytes(b"a")
    entry = new_entry(
        plan.items[0].render, "done", output_sha256=sha256_file(output), output_size=1
    )
    plan.lock.shots["a"] = entry.model_copy(update={field: Decimal("1e30")})
    lock = manifest.with_suffix(".lock")
    plan.lock.save(lock)
    assert "1e+30" in lock.read_text().lower()
    line = one_line_error(kling_batch(command, str(manifest)))
    assert "manifest.lock" in line and "'a'" in line and field in line


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("completed_at", datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))),
        ("result_expires_at", datetime(2030, 1, 1)),  # no time zone
    ],
    ids=["before-year-one-in-utc", "naive"],
)
def test_a_time_no_render_has_is_refused_in_one_line(
    project: Project, field: str, value: datetime
) -> None:
    """A lockfile entry whose time has no time zone, or lies before year 1 once in UTC:
    `review` exits 2 in one line naming the shot and the field. Before, it died with a
    traceback (comparing the naive expiry with now, or converting the time to UTC)."""
    manifest = project('[[shots]]\nid = "a"\nprompt = "a calm sea"\n')
    plan = build_plan(manifest, now=NOW)
    entry = new_entry(plan.items[0].render, "done", output_sha256="sha256:" + "0" * 64)
    update = {"output_size": 1, "result_url": "https://cdn.example/a.mp4", field: value}
    plan.lock.shots["a"] = entry.model_copy(update=update)
    plan.lock.save(manifest.with_suffix(".lock"))
    line = one_line_error(kling_batch("review", str(manifest)))
    assert "manifest.lock" in line and "'a'" in line and field in line
