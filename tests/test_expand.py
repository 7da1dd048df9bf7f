"""Expansion: matrices as in GitHub Actions, takes, template context, includes."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from kling_batch.errors import TemplateProblem, UserError
from kling_batch.expand import expand_shots
from kling_batch.manifest import load_manifest
from kling_batch.templating import Templates


def ids(path: Path) -> list[str]:
    """Render ids of a manifest, in order."""
    return [spec.id for spec in expand_shots(load_manifest(path))]


def test_matrix_crosses_every_key(project: Callable[..., Path]) -> None:
    """Two keys of two values give four renders, first key outermost."""
    path = project("""
        [[shots]]
        id = "{{ a }}-{{ b }}"
        matrix = { a = ["x", "y"], b = [1, 2] }
        prompt = "p"
    """)
    assert ids(path) == ["x-1", "x-2", "y-1", "y-2"]


def test_matrix_exclude_removes_partial_matches(project: Callable[..., Path]) -> None:
    """An exclude entry removes every combination that contains it."""
    path = project("""
        [[shots]]
        id = "{{ a }}-{{ b }}"
        matrix = { a = ["x", "y"], b = [1, 2], exclude = [{ a = "y" }] }
        prompt = "p"
    """)
    assert ids(path) == ["x-1", "x-2"]


def test_matrix_include_extends_matching_combinations(project: Callable[..., Path]) -> None:
    """An include entry adds its new keys to combinations it does not contradict."""
    path = project("""
        [[shots]]
        id = "{{ a }}-{{ b }}-{{ c | default('none') }}"
        matrix = { a = ["x", "y"], b = [1], include = [{ a = "x", c = "extra" }] }
        prompt = "p"
    """)
    assert ids(path) == ["x-1-extra", "y-1-none"]


def test_matrix_include_without_match_adds_a_combination(project: Callable[..., Path]) -> None:
    """An include entry that contradicts every combination becomes a combination of its own."""
    path = project("""
        [[shots]]
        id = "{{ a }}-{{ b | default(0) }}"
        matrix = { a = ["x"], b = [1], include = [{ a = "z" }] }
        prompt = "p"
    """)
    assert ids(path) == ["x-1", "z-0"]


def test_matrix_key_naming_a_request_field_sets_it(project: Callable[..., Path]) -> None:
    """A matrix over model_tier sets the tier of each render, over the defaults."""
    path = project("""
        [defaults]
        model_tier = "pro"
        [[shots]]
        id = "t-{{ model_tier }}"
        matrix = { model_tier = ["standard", "4k"] }
        prompt = "p"
    """)
    specs = expand_shots(load_manifest(path))
    assert [s.fields["model_tier"] for s in specs] == ["standard", "4k"]


def test_takes_make_suffixed_ids_with_take_in_context(project: Callable[..., Path]) -> None:
    """takes = 2 gives `<id>-take1`, `<id>-take2`; templates see shot.take and shot.name."""
    path = project("""
        [[shots]]
        id = "hero"
        takes = 2
        prompt = "take {{ shot.take }} of {{ shot.name }} ({{ id }})"
    """)
    specs = expand_shots(load_manifest(path))
    assert [(s.id, s.fields["prompt"]) for s in specs] == [
        ("hero-take1", "take 1 of hero (hero-take1)"),
        ("hero-take2", "take 2 of hero (hero-take2)"),
    ]


def test_context_has_vars_and_manifest_name(project: Callable[..., Path]) -> None:
    """vars and manifest.name are available to every template; slug works."""
    path = project("""
        [vars]
        brand = "North Wind"
        [[shots]]
        id = "{{ brand | slug }}"
        prompt = "{{ brand }} for {{ manifest.name }}"
    """)
    spec = expand_shots(load_manifest(path))[0]
    assert (spec.id, spec.fields["prompt"]) == ("north-wind", "North Wind for test")


def test_default_output_path_is_id_under_output_dir(project: Callable[..., Path]) -> None:
    """Without `output`, a render lands at output_dir/<id>.mp4."""
    path = project("""
        [[shots]]
        id = "a"
        prompt = "p"
    """)
    assert str(expand_shots(load_manifest(path))[0].output) == "renders/a.mp4"


def test_disabled_shots_are_skipped(project: Callable[..., Path]) -> None:
    """enabled = false removes a shot from the plan."""
    path = project("""
        [[shots]]
        id = "a"
        prompt = "p"
        enabled = false
        [[shots]]
        id = "b"
        prompt = "p"
    """)
    assert ids(path) == ["b"]


def test_prompt_partial_is_included(project: Callable[..., Path], tmp_path: Path) -> None:
    """`{% include %}` reads a partial from the manifest's folder."""
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "style.j2").write_text("Moody, {{ light }} light.")
    path = project("""
        [[shots]]
        id = "a"
        prompt = "{% set light = 'blue' %}{% include 'prompts/style.j2' %} A street."
    """)
    assert expand_shots(load_manifest(path))[0].fields["prompt"] == "Moody, blue light. A street."


def test_include_through_symlink_outside_is_refused(
    project: Callable[..., Path], tmp_path: Path
) -> None:
    """A partial that is a symlink to a file outside the folder is not read."""
    outside = tmp_path.parent / f"{tmp_path.name}-secret.txt"
    outside.write_text("secret")
    (tmp_path / "link.j2").symlink_to(outside)
    path = project("""
        [[shots]]
        id = "a"
        prompt = "{% include 'link.j2' %}"
    """)
    with pytest.raises(UserError, match="inside"):
        expand_shots(load_manifest(path))


def test_shots_from_included_files(project: Callable[..., Path], tmp_path: Path) -> None:
    """`include` globs add the shots of other files, sorted by name, after the manifest's own."""
    (tmp_path / "shots").mkdir()
    (tmp_path / "shots" / "b.toml").write_text('[[shots]]\nid = "from-b"\nprompt = "p"\n')
    (tmp_path / "shots" / "a.json").write_text('{"shots": [{"id": "from-a", "prompt": "p"}]}')
    path = project("""
        include = ["shots/*.toml", "shots/*.json"]
        [[shots]]
        id = "own"
        prompt = "p"
    """)
    assert ids(path) == ["own", "from-b", "from-a"]


@pytest.mark.timeout(10)  # a hang detector: globs that followed the links ran for minutes
def test_include_globs_do_not_go_through_links_to_folders(
    project: Callable[..., Path], tmp_path: Path
) -> None:
    """A glob never enters a link to a folder: six links to the project's own folder and
    `*/*/*/*/*/*/shots.toml` match nothing (not 6**6 paths to the one `shots.toml`), and a
    link to `shots` adds no second copy of its files."""
    (tmp_path / "shots.toml").write_text('[[shots]]\nid = "top"\nprompt = "p"\n')
    (tmp_path / "shots").mkdir()
    (tmp_path / "shots" / "a.toml").write_text('[[shots]]\nid = "from-a"\nprompt = "p"\n')
    (tmp_path / "alias").symlink_to("shots")
    for i in range(6):
        (tmp_path / f"l{i}").symlink_to(".")
    path = project("""
        include = ["*/*/*/*/*/*/shots.toml"]
    """)
    with pytest.raises(
        UserError, match=re.escape("include '*/*/*/*/*/*/shots.toml' matches no file")
    ):
        load_manifest(path)
    path = project("""
        include = ["*/*.toml", "**/a.toml"]
    """)
    assert load_manifest(path).included == (tmp_path / "shots" / "a.toml",)


def test_include_glob_matching_too_many_files_is_refused(
    project: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A glob matching more shot files than `INCLUDE_MAX_FILES` is refused, naming it."""
    monkeypatch.setattr("kling_batch.manifest.INCLUDE_MAX_FILES", 3)
    (tmp_path / "shots").mkdir()
    for name in "abcd":
        (tmp_path / "shots" / f"{name}.toml").write_text("shots = []\n")
    path = project("""
        include = ["shots/[abc].toml", "shots/*.toml"]
    """)
    with pytest.raises(
        UserError, match=re.escape("include 'shots/*.toml' matches more than 3 files")
    ):
        load_manifest(path)


def test_equal_values_that_print_differently_render_each_its_own_text(
    project: Callable[..., Path],
) -> None:
    """One instant in two time zones, 0.0 and -0.0: equal, yet each renders as itself (a
    render reusing the other's text would send, and pay for, the wrong prompt)."""
    path = project("""
        [[shots]]
        id = "clock-{{ n }}"
        matrix = { n = [1, 2], include = [
            { n = 1, when = 2024-05-01T08:00:00+01:00, x = 0.0 },
            { n = 2, when = 2024-05-01T09:00:00+02:00, x = -0.0 },
        ] }
        prompt = "a station clock at {{ when.hour }} o'clock, {{ x }}"
    """)
    prompts = [spec.fields["prompt"] for spec in expand_shots(load_manifest(path))]
    assert prompts == ["a station clock at 8 o'clock, 0.0", "a station clock at 9 o'clock, -0.0"]


@pytest.mark.parametrize(
    ("partial", "said"),
    [
        ("a\nb\n{{ nope }}\n", "undefined: 'nope' is undefined (line 3 of prompts/bad.j2)"),
        ("a\n{% if %}\n", "(line 2 of prompts/bad.j2)"),
    ],
    ids=["undefined", "syntax"],
)
def test_an_error_in_a_partial_names_the_partial_and_its_line(
    project: Callable[..., Path], tmp_path: Path, partial: str, said: str
) -> None:
    """A template error inside an included partial says which partial and which of its
    lines, not the line of the `{% include %}`; one in the field itself says so too."""
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "bad.j2").write_text(partial)
    path = project("""
        [[shots]]
        id = "a"
        prompt = "{% include 'prompts/bad.j2' %} x"
    """)
    with pytest.raises(UserError) as caught:
        expand_shots(load_manifest(path))
    assert said in caught.value.message and caught.value.field == "prompt"
    path = project("""
        [[shots]]
        id = "a"
        prompt = "x\\n{{ nope }}"
    """)
    with pytest.raises(UserError, match=re.escape("(line 2 of the template)")):
        expand_shots(load_manifest(path))


def test_cosmetic_template_edit_renders_same_request(project: Callable[..., Path]) -> None:
    """Rewriting a template so that it renders the same text changes nothing."""
    first = project("""
        [vars]
        x = "fog"
        [[shots]]
        id = "a"
        prompt = "{{ x }} on the bay"
    """)
    before = expand_shots(load_manifest(first))[0].fields
    second = project("""
        [vars]
        x = "fog"
        [[shots]]
        id = "a"
        prompt = "{{x}} on the {{ 'bay' }}"
    """)
    assert expand_shots(load_manifest(second))[0].fields == before


def test_matrix_values_render_distinctly_by_type(project: Callable[..., Path]) -> None:
    """True and 1 are equal in Python but render differently; the render cache keeps them apart."""
    path = project("""
        [[shots]]
        id = "v{{ loop_index }}"
        matrix = { v = [1, true], loop_index = [0] }
        prompt = "{{ v }}"
        output = "{{ v }}.mp4"
    """)
    with pytest.raises(UserError, match="duplicate id"):
        ids(path)
    path = project("""
        [[shots]]
        id = "v-{{ v }}"
        matrix = { v = [1, true] }
        prompt = "{{ v }}"
    """)
    assert ids(path) == ["v-1", "v-True"]


def test_list_var_with_changing_context_renders_each_time(project: Callable[..., Path]) -> None:
    """A template reading a list var and the take renders freshly for every take."""
    path = project("""
        [vars]
        moods = ["calm", "wild"]
        [[shots]]
        id = "a"
        takes = 3
        prompt = "{{ moods[shot.take % 2] }} sea, take {{ shot.take }}"
    """)
    prompts = [spec.fields["prompt"] for spec in expand_shots(load_manifest(path))]
    assert prompts == ["wild sea, take 1", "calm sea, take 2", "wild sea, take 3"]


@pytest.mark.parametrize(
    "text",
    [
        "{{ brand }} shot 7 on a misty ridge | 4s: close-up",
        "{{brand}}{{n}}",
        "{{\tbrand }} and {{ flag }} and {{ nothing }} and {{ ratio }}",
        "{ {{ brand }} }} {",
        "{{{ brand }}",
        "{{ brand }}\n",
        "line one\r\n{{ brand }}",
        "{{ true }} {{ none }} {{ loop }}",
        "{{ items }} {{ table }} {{ brand | upper }}",
        "{{- brand }}",
        "{# a comment #}{{ brand }}",
    ],
)
def test_simple_templates_render_as_jinja_does(text: str, tmp_path: Path) -> None:
    """Templates of text and bare names, rendered without Jinja, equal Jinja's rendering
    (or fail as Jinja fails)."""
    values = {"brand": "Northwind", "n": 3, "flag": True, "nothing": None, "ratio": 1.5}
    values = {**values, "items": [1, "x"], "table": {"k": 2}}

    def outcome(render: Callable[[Templates, dict[str, object]], str]) -> str:
        templates = Templates(tmp_path)
        try:
            return render(templates, templates.context(values))
        except Exception as problem:  # Jinja's own errors, or ours wrapping them
            return f"error: {problem}"

    jinja = outcome(lambda t, context: t._compile(text)[0].render(context))
    fast = outcome(lambda t, context: t.render(text, context))
    assert fast == jinja or (jinja.startswith("error") and fast.startswith("error"))


def test_simple_template_with_an_undefined_name_says_so(tmp_path: Path) -> None:
    """An undefined name in a simple template is Jinja's error, with its wording."""
    templates = Templates(tmp_path)
    with pytest.raises(TemplateProblem, match="'brnad' is undefined"):
        templates.render("{{ brnad }} shoes", templates.context({"brand": "Northwind"}))
