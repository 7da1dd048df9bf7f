"""The hash cache (`assets.AssetStore`): a file hashed once is known by its stat facts in
the next process, whether the cache is read whole or searched for a few rows (the plan of
an edit), and whether it was written in one piece or many."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from kling_batch import assets
from kling_batch.assets import AssetStore

# Names whose JSON text holds another's (`a.png` inside `xa.png`, and after a quote in
# `0"a.png`, which sorts first), a `]` (which ends a row), a comma before a quote, and
# letters beyond ASCII.
NAMES = ["a.png", "xa.png", '0"a.png', '0,"a.png', "b]x.png", "dir/a.png", "été.png", "z.png"]


@pytest.fixture
def hashed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Files hashed this process: each file here was written a moment ago (believed at
    once), and every hash is recorded."""
    monkeypatch.setattr(assets, "_RACY_NS", 0)
    seen: list[str] = []
    real = assets.sha256_file

    def counting(path: str | Path) -> str:
        seen.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(assets, "sha256_file", counting)
    return seen


def cached_store(root: Path) -> dict[str, tuple[str, int]]:
    """Each of NAMES written (with its own bytes), hashed and saved in the hash cache."""
    (root / "dir").mkdir()
    store = AssetStore(root)
    for number, name in enumerate(NAMES):
        (root / name).write_bytes(b"bytes of file %d" % number)
    known = {name: store.relative_hash(name) for name in NAMES}
    store.save()
    return {name: value for name, value in known.items() if value is not None}


@pytest.mark.parametrize("asked", [[name] for name in NAMES] + [NAMES])
def test_a_few_files_asked_for_are_found_in_the_cache(
    tmp_path: Path, hashed: list[str], asked: list[str]
) -> None:
    """A store told it needs only some files finds each one's own row (never another's
    whose name contains it) and hashes nothing."""
    known = cached_store(tmp_path)
    hashed.clear()
    store = AssetStore(tmp_path)
    store.only(asked)
    assert {name: store.relative_hash(name) for name in asked} == {n: known[n] for n in asked}
    assert hashed == []


def test_many_files_asked_for_read_the_cache_whole(
    tmp_path: Path, hashed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the number of rows worth searching for one by one, the cache is parsed whole,
    with the same answers."""
    monkeypatch.setattr(assets, "_FOUND_MOST", 2)
    known = cached_store(tmp_path)
    hashed.clear()
    store = AssetStore(tmp_path)
    store.only(NAMES)
    assert {name: store.relative_hash(name) for name in NAMES} == known
    assert hashed == []


def test_a_file_changed_since_it_was_cached_is_hashed_again(
    tmp_path: Path, hashed: list[str]
) -> None:
    """A row found by the search is believed only while its file's stat facts hold."""
    known = cached_store(tmp_path)
    (tmp_path / "xa.png").write_bytes(b"other bytes, another size")
    hashed.clear()
    store = AssetStore(tmp_path)
    store.only(["xa.png", "a.png"])
    assert store.relative_hash("a.png") == known["a.png"]
    assert store.relative_hash("xa.png") != known["xa.png"]
    assert hashed == ["xa.png"]


def test_a_cache_written_in_pieces_is_one_json_document(
    tmp_path: Path, hashed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written a few rows at a time, the cache is whole JSON holding every row, and the
    next store hashes none of its files."""
    monkeypatch.setattr(assets, "_SAVED_ROWS", 2)
    known = cached_store(tmp_path)
    store = AssetStore(tmp_path)
    (tmp_path / "a.png").unlink()
    (tmp_path / "new.png").write_bytes(b"new")
    assert store.relative_hash("a.png") is None
    known["new.png"] = store.relative_hash("new.png") or ("", 0)
    store.save()
    files = json.loads(store.state.hash_cache.read_text())["files"]
    # The row of a file gone stays (a cache is not a record): it holds for no file later.
    assert sorted(files) == sorted([*NAMES, "new.png"])
    hashed.clear()
    again = AssetStore(tmp_path)
    assert {name: again.relative_hash(name) for name in known if name != "a.png"} == {
        name: value for name, value in known.items() if name != "a.png"
    }
    assert hashed == []


def damaged(store: AssetStore, name: str, row: str) -> None:
    """The cache's row of `name` replaced by `row`, as a stranger's hand might leave it."""
    text = store.state.hash_cache.read_text()
    genuine = json.dumps(json.loads(text)["files"][name], separators=(",", ":"))
    store.state.hash_cache.write_text(text.replace(genuine, row))


@pytest.mark.parametrize("only", [None, ["a.png"]], ids=["read whole", "searched"])
@pytest.mark.parametrize(
    "row",
    ["[" * 100_000 + "]" * 100_000, '[1e999,1,1,1,"sha256:0",1]'],
    ids=["nested too deep", "a number too large"],
)
def test_a_damaged_row_is_no_cache(
    tmp_path: Path, hashed: list[str], only: list[str] | None, row: str
) -> None:
    """A row nested too deep or holding a number too large is a damaged cache: the file is
    hashed again, where it stopped planning with a traceback."""
    known = cached_store(tmp_path)
    damaged(AssetStore(tmp_path), "a.png", row)
    hashed.clear()
    store = AssetStore(tmp_path)
    if only is not None:
        store.only(only)
    assert store.relative_hash("a.png") == known["a.png"]
    assert "a.png" in hashed


@pytest.mark.parametrize("seconds", ["five", "NaN", "Infinity"])
def test_a_damaged_video_length_is_probed_again(
    tmp_path: Path, hashed: list[str], monkeypatch: pytest.MonkeyPatch, seconds: str
) -> None:
    """A video's length in the cache that is no number is probed again, never believed
    (it stopped planning with a traceback)."""
    probed: list[Path] = []
    monkeypatch.setattr(
        assets, "_probe_seconds", lambda path: probed.append(path) or Decimal("5.000")
    )
    (tmp_path / "clip.mp4").write_bytes(b"a video")
    store = AssetStore(tmp_path)
    assert store.video_seconds(store.resolve("clip.mp4")) == Decimal("5.000")
    store.save()
    row = json.loads(store.state.hash_cache.read_text())["files"]["clip.mp4"]
    damaged(store, "clip.mp4", json.dumps([*row[:6], seconds], separators=(",", ":")))
    again = AssetStore(tmp_path)
    assert again.video_seconds(again.resolve("clip.mp4")) == Decimal("5.000")
    assert len(probed) == 2


def test_a_file_given_twice_in_a_hand_edited_cache_reads_as_the_whole_parse_reads_it(
    tmp_path: Path, hashed: list[str]
) -> None:
    """A row given twice for one file (the first one false): the search believes the row
    the whole parse believes (the last), so the plan of an edit and the full plan agree."""
    known = cached_store(tmp_path)
    cache = AssetStore(tmp_path).state.hash_cache
    text = cache.read_text()
    row = json.dumps(json.loads(text)["files"]["a.png"], separators=(",", ":"))
    false = row.replace(known["a.png"][0].removeprefix("sha256:"), "0" * 64)
    head = assets._CACHE_HEAD.decode()
    cache.write_text(text.replace(head, f'{head}"a.png":{false},', 1))
    hashed.clear()
    whole, searched = AssetStore(tmp_path), AssetStore(tmp_path)
    searched.only(["a.png"])
    assert searched.relative_hash("a.png") == whole.relative_hash("a.png") == known["a.png"]
    assert hashed == []
