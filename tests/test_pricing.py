"""Prices: every row of the model card, scenes, takes, video inputs and sound, exact in Decimal."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import av
import pytest

from kling_batch.plan import build_plan
from kling_batch.pricing import price, price_rows
from tests.conftest import NOW


def costs(path: Path) -> dict[str, tuple[Decimal, Decimal, Decimal]]:
    """id → (rate, seconds, cost) of every render in the plan."""
    plan = build_plan(path, now=NOW)
    return {i.render.id: (i.render.price.rate, i.render.seconds, i.render.cost) for i in plan.items}


# Rows and rates typed in from the model card, not read from the code under test.
MODEL_CARD_ROWS = [
    ("Standard T2V/I2V", "standard", "false", None, "0.168"),
    ("Standard T2V/I2V Sound", "standard", "true", None, "0.224"),
    ("Standard Video Input", "standard", "true", "video", "0.252"),
    ("Pro T2V/I2V", "pro", "false", None, "0.224"),
    ("Pro T2V/I2V Sound", "pro", "true", None, "0.280"),
    ("Pro Video Input", "pro", "false", "video", "0.336"),
    ("4K T2V/I2V/Ref", "4k", "true", None, "0.525"),
]


@pytest.mark.parametrize(
    ("label", "tier", "sound", "video", "rate"),
    MODEL_CARD_ROWS,
    ids=[row[0] for row in MODEL_CARD_ROWS],
)
def test_each_price_row(
    project: Callable[..., Path],
    clip: Callable[[str, str], Path],
    label: str,
    tier: str,
    sound: str,
    video: str | None,
    rate: str,
) -> None:
    """Each of the seven rows of the model card prices a 6-second render at its rate."""
    clip("street.mp4", "clip.mp4")  # 6 s long
    media = 'video = "clip.mp4"' if video else "duration = 6"
    path = project(f"""
        [[shots]]
        id = "x"
        prompt = "a harbour at dawn"
        model_tier = "{tier}"
        sound = {sound}
        {media}
    """)
    plan = build_plan(path, now=NOW)
    render = plan.items[0].render
    assert render.price.row.label == label
    assert render.cost == Decimal(rate) * 6


def test_all_seven_rows_exist() -> None:
    """The price table read from schemas/kling-o3.json has exactly the model card's rows."""
    assert [(r.label, r.rate) for r in price_rows()] == [
        (label, Decimal(rate)) for label, *_, rate in MODEL_CARD_ROWS
    ]


def test_multi_scene_without_prefixes(project: Callable[..., Path]) -> None:
    """Three unprefixed scenes at duration 4 bill 12 seconds."""
    path = project("""
        [[shots]]
        id = "x"
        prompt = "a | b | c"
        duration = 4
    """)
    assert costs(path)["x"] == (Decimal("0.280"), Decimal(12), Decimal("3.360"))


def test_multi_scene_with_prefixes(project: Callable[..., Path]) -> None:
    """Prefixed scenes use their own length; the unprefixed one uses duration."""
    path = project('''
        [[shots]]
        id = "x"
        model_tier = "standard"
        sound = false
        duration = 5
        prompt = """
        3s: the door opens
        7s: a dog runs in
        the dog sleeps
        """
    ''')
    assert costs(path)["x"] == (Decimal("0.168"), Decimal(15), Decimal("2.520"))


def test_takes_each_cost_the_full_price(project: Callable[..., Path]) -> None:
    """Three takes are three renders at the full price each."""
    path = project("""
        [[shots]]
        id = "x"
        prompt = "rain"
        takes = 3
    """)
    plan = build_plan(path, now=NOW)
    assert [i.render.id for i in plan.items] == ["x-take1", "x-take2", "x-take3"]
    assert plan.totals.to_run_cost == Decimal("4.200")


def test_video_edit_priced_from_probed_clip(
    project: Callable[..., Path], clip: Callable[[str, str], Path]
) -> None:
    """A 6 s local clip bills 6 s at the Video Input rate, whatever `duration` says."""
    clip("street.mp4", "in/clip.mp4")
    path = project("""
        [[shots]]
        id = "x"
        prompt = "make it snow"
        video = "in/clip.mp4"
        duration = 15
    """)
    assert costs(path)["x"] == (Decimal("0.336"), Decimal(6), Decimal("2.016"))


def test_video_edit_clip_over_ten_seconds_is_capped(
    project: Callable[..., Path], clip: Callable[[str, str], Path]
) -> None:
    """A 12 s clip bills 10 s, with a warning."""
    clip("long-take.mp4", "long.mp4")
    path = project("""
        [[shots]]
        id = "x"
        prompt = "autumn"
        video = "long.mp4"
        model_tier = "standard"
    """)
    plan = build_plan(path, now=NOW)
    assert costs(path)["x"] == (Decimal("0.252"), Decimal(10), Decimal("2.520"))
    assert any("first 10s" in w for w in plan.warnings)


def clip_with_sound(path: Path, picture: int, sound: int) -> Path:
    """An H.264 MP4 of `picture` seconds (160×96, 4 fps) with `sound` seconds of AAC."""
    fps, rate = 4, 8000
    with av.open(str(path), mode="w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 160, 96, "yuv420p"
        video.options = {"preset": "ultrafast", "tune": "zerolatency"}  # no frame reordered
        audio = out.add_stream("aac", rate=rate)
        audio.layout = "mono"
        for n in range(picture * fps):
            frame = av.VideoFrame(160, 96, "yuv420p")
            frame.pts, frame.time_base = n, Fraction(1, fps)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        for start in range(0, sound * rate, 1024):
            samples = av.AudioFrame(format="fltp", layout="mono", samples=1024)
            for plane in samples.planes:
                plane.update(bytes(plane.buffer_size))
            samples.sample_rate, samples.pts = rate, start
            samples.time_base = Fraction(1, rate)
            out.mux(audio.encode(samples))
        out.mux(audio.encode(None))
    return path


@pytest.mark.parametrize(("picture", "sound", "billed"), [(10, 2, 10), (14, 5, 10), (4, 12, 4)])
def test_video_edit_bills_the_pictures_length_not_the_sounds(
    project: Callable[..., Path], picture: int, sound: int, billed: int
) -> None:
    """A clip whose sound track is shorter or longer than its picture is billed by the
    picture (capped at 10 s): 2 s of sound over 10 s of picture is 10 s, not 2 s."""
    path = project("""
        [[shots]]
        id = "x"
        prompt = "make it snow"
        video = "clip.mp4"
        model_tier = "pro"
    """)
    clip_with_sound(path.parent / "clip.mp4", picture, sound)
    assert costs(path)["x"] == (Decimal("0.336"), Decimal(billed), Decimal("0.336") * billed)


def test_remote_video_edit_is_an_assumption(project: Callable[..., Path]) -> None:
    """A remote clip's length is unknown: priced at the 10 s cap it can bill at most (never
    at `duration`, which an edit does not use), flagged as an assumption."""
    path = project("""
        [[shots]]
        id = "x"
        prompt = "autumn"
        video = "https://cdn.example.com/clip.mp4"
        duration = 8
    """)
    plan = build_plan(path, now=NOW)
    render = plan.items[0].render
    assert render.cost == Decimal("0.336") * 10
    assert render.assumptions == ("remote video: length unknown, priced at the 10s cap",)


def test_reference_with_videos_uses_video_input_row(
    project: Callable[..., Path], clip: Callable[[str, str], Path]
) -> None:
    """Reference with a video bills the Video Input row over the scene seconds."""
    clip("street.mp4", "ref.mp4")
    path = project("""
        [[shots]]
        id = "x"
        prompt = "5s: a | 5s: b"
        reference_videos = ["ref.mp4"]
        model_tier = "standard"
    """)
    assert costs(path)["x"] == (Decimal("0.252"), Decimal(10), Decimal("2.520"))


def test_reference_with_images_only_uses_plain_rows(
    project: Callable[..., Path], image: Callable[[str], Path]
) -> None:
    """Reference with images only is priced like text-to-video."""
    image("a.png")
    path = project("""
        [[shots]]
        id = "x"
        prompt = "a dancer"
        reference_images = ["a.png", "https://example.com/b.png"]
        sound = false
    """)
    plan = build_plan(path, now=NOW)
    assert plan.items[0].render.workflow == "reference"
    assert costs(path)["x"] == (Decimal("0.224"), Decimal(5), Decimal("1.120"))


def test_sound_off_is_cheaper(project: Callable[..., Path]) -> None:
    """Turning sound off switches standard and pro to the plain rows."""
    path = project("""
        [[shots]]
        id = "on-{{ model_tier }}"
        matrix = { model_tier = ["standard", "pro"] }
        prompt = "waves"
        [[shots]]
        id = "off-{{ model_tier }}"
        matrix = { model_tier = ["standard", "pro"] }
        prompt = "waves"
        sound = false
    """)
    got = {key: value[2] for key, value in costs(path).items()}
    assert got == {
        "on-standard": Decimal("1.120"),
        "on-pro": Decimal("1.400"),
        "off-standard": Decimal("0.840"),
        "off-pro": Decimal("1.120"),
    }


def test_4k_ignores_sound(project: Callable[..., Path]) -> None:
    """4K has one rate with or without sound."""
    path = project("""
        [[shots]]
        id = "s-{{ sound }}"
        matrix = { sound = [true, false] }
        prompt = "peaks"
        model_tier = "4k"
    """)
    assert {k: v[2] for k, v in costs(path).items()} == {
        "s-True": Decimal("2.625"),
        "s-False": Decimal("2.625"),
    }


def test_fractional_cost_rounds_up_to_tenth_of_cent() -> None:
    """A cost with more decimals than a tenth of a cent (a probed clip) is rounded up."""
    # 0.224 × 3.3 = 0.7392 → 0.740
    priced = price("standard", video_input=False, sound=True, seconds=Decimal("3.3"))
    assert priced.cost == Decimal("0.740")
