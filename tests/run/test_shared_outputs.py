"""Two manifests in one folder never write each other's outputs (issue 9)."""

from __future__ import annotations

from collections.abc import Callable

from tests.run.conftest import MANIFEST, Project


def beside(project: Project, name: str, text: str) -> Project:
    """Another manifest in the same folder, rendered against the same emulator."""
    path = project.root / name
    path.write_text(text)
    return Project(project.root, path, project.served)


def test_a_second_manifest_writing_the_same_outputs_is_refused(
    make_project: Callable[..., Project],
) -> None:
    """A copy of a rendered manifest under another name is refused (exit 2) before any
    request, in one line naming both lockfiles and the shared output."""
    project = make_project()
    assert project.run().returncode == 0
    renders = {p: p.read_bytes() for p in (project.root / "renders").iterdir()}
    requests = project.requests()
    copy = beside(project, "copy.toml", MANIFEST)

    result = copy.run()

    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"error: {copy.lock}, shot 'dawn', field 'output': renders/dawn.mp4 is also an output "
        "of shots.lock (renders/dawn.mp4); two manifests here would overwrite each other's "
        "renders: give one of them another output_dir"
    ]
    assert project.requests() == requests
    assert not copy.lock.exists()
    assert {p: p.read_bytes() for p in (project.root / "renders").iterdir()} == renders


def test_letter_case_alone_does_not_make_outputs_different(
    make_project: Callable[..., Project],
) -> None:
    """`Renders/` and `renders/` are one folder on macOS and Windows: refused too."""
    project = make_project()
    assert project.run().returncode == 0
    other = MANIFEST.replace('output_dir = "renders"', 'output_dir = "Renders"')
    result = beside(project, "other.toml", other).run()
    assert result.returncode == 2, result.stderr
    assert "Renders/dawn.mp4 is also an output of shots.lock (renders/dawn.mp4)" in result.stderr


def test_manifests_with_their_own_output_dirs_both_render(
    make_project: Callable[..., Project],
) -> None:
    """Two manifests in one folder with different output_dirs render side by side."""
    project = make_project()
    assert project.run().returncode == 0
    other = beside(
        project, "other.toml", MANIFEST.replace('output_dir = "renders"', 'output_dir = "b"')
    )
    result = other.run()
    assert result.returncode == 0, result.stderr
    assert len(list((project.root / "b").glob("*.mp4"))) == 4


def test_emulator_renders_do_not_collide_with_real_ones(
    make_project: Callable[..., Project],
) -> None:
    """`X.lock` and `X.emulator.lock` never collide: emulator outputs have their own folder."""
    project = make_project()
    assert project.run().returncode == 0
    result = project.run("--emulator")
    assert result.returncode == 0, result.stderr
    assert len(list((project.root / "renders-emulator").glob("*.mp4"))) == 4
