"""The capped template sandbox: ordinary templates render exactly as Jinja renders them,
and work that only a hostile template does is refused in one message."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest
from jinja2.sandbox import SandboxedEnvironment

from kling_batch.errors import TemplateProblem
from kling_batch.templating import Templates

ORDINARY = [
    "{{ brand }} on a misty ridge",
    "{% for i in range(3) %}{{ loop.index }}/{{ loop.length }} {% endfor %}",
    "{% for word in ['a', 'b'] if word != 'b' %}{{ word }}{% else %}none{% endfor %}",
    "{{ range(10) | join(', ') }} {{ 'ab' | center(6) }}|{{ 'x' | indent(2, true) }}",
    "{{ (-1) ** 3 }} {{ 2 ** 64 }} {{ 7 * 6 }} {{ 1.5 * 2 }} {{ 10 // 3 }} {{ 10 % 3 }}",
    "{{ '%05d' % 42 }} {{ '%s-%s' % ('a', 'b') }} {{ '%.2f' | format(3.14159) }}",
    "{{ '{:,}'.format(15000000000) }} {{ '{:>6}'.format('r') }}",
    "{{ brand ~ '-' ~ 3 }} {{ [1, 2] + [3] }} {{ 'ab' * 3 }} {{ brand | upper | truncate(5) }}",
    "{% macro tag(t) %}#{{ t }}{% endmacro %}{{ tag('a') }}{{ tag('b') }}",
    "{% set parts %}{% for i in range(2) %}[{{ i }}]{% endfor %}{% endset %}{{ parts }}",
    "{{ 'one two three' | wordcount > 2 }} {{ [3, 1] | min }}",
    "{{ {'b': 1, 'a': 2} | dictsort | first | join('=') }} {{ [3, 1, 2] | sort | list }}",
    "{{ [1, 2.5] | sum }} {{ [{'n': 2}, {'n': 3}] | sum(attribute='n', start=10) }}",
    "{% set j = joiner(', ') %}{% for x in ['a', 'b'] %}{{ j() }}{{ x }}{% endfor %}",
    "{% set c = cycler('odd', 'even') %}{% for x in 'abc' %}{{ c.next() }} {% endfor %}",
    "{{ ', '.join(['a', 'b'] | map('upper')) }} {{ '-'.join([1, 2] | map('string') | reverse) }}",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_templates_render_as_jinja_renders_them(text: str, tmp_path: Path) -> None:
    """The same output as Jinja's own sandbox, rendered twice (nothing is folded away)."""
    expected = SandboxedEnvironment(undefined=jinja2.StrictUndefined).from_string(text)
    templates = Templates(tmp_path)
    context = templates.context({"brand": "Northwind"})
    first = templates.render(text, context)
    assert first == expected.render(brand="Northwind")
    assert templates.render(text, context) == first


# A million characters as text (1,000 × 10 × 10 × 10), though each list holds ten items.
NESTED = (
    "{% set a = ['x' * 1000] %}{% set b = [a, a, a, a, a, a, a, a, a, a] %}"
    "{% set c = [b, b, b, b, b, b, b, b, b, b] %}{% set c = [c, c, c, c, c, c, c, c, c, c] %}"
)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{% set s = 'x' * 99999 %}{{ [s] * 2 }}", "'*' repetition"),
        ("{% set s = 'x' * 60000 %}{{ s + s }}", "'+' result"),
        ("{% set s = 'x' * 90000 %}{{ s | replace('x', 'yy') }}", "over 100,000 characters"),
        ("{{ 'a\\tb'.expandtabs(100000000) }}", "expandtabs() would do too much work"),
        # an int's bytes are as many as asked for, made before any result is measured
        ("{{ (1).to_bytes(10 ** 9, 'big') | length }}", "to_bytes() would do too much work"),
        ("{{ '{:{}}'.format('a', 999999999) }}", "nested '{}' fields"),
        ("{{ ('a\\n' * 50000) | indent('x' * 1000) | length }}", "indent() would do too much"),
        ("{{ range(10) | batch(1000000000) | list }}", "batch() would do too much work"),
        ("{% set l = [] %}{{ l.append(1) }}", "unsafe"),
        ("{{ (10 ** 600) * (10 ** 600) }}", "'*' would make a number"),
        ("{{ 10 ** 1001 }}", "'**' would make a number of about 1,001 digits"),
        # list literals are not measured as they are built, only where they are used
        (NESTED + "{% set ns = namespace() %}{% set ns.v = c %}{{ ns }}", "an output value"),
        (NESTED + "{% set ns = namespace(v=c) %}{{ ns ~ '' }}", "'~' result would be over"),
        (NESTED + "{{ {'v': c}.items() }}", "an output value would be over 100,000"),
        # adding lists or texts is quadratic inside one call, out of the deadline's reach
        ("{{ [[1], [2]] | sum(start=[]) }}", "sum filter adds numbers only, and its start is a"),
        ("{{ [[1], [2]] | sum }}", "sum filter adds numbers only, and an item is a list"),
        ("{{ ['a', 'b'] | sum(start='') }}", "sum filter adds numbers only, and its start is a"),
        (
            "{% macro m(n) %}{% if n %}{{ m(n - 1) }}{{ m(n - 1) }}{% endif %}{% endmacro %}"
            "{{ m(40) }}",
            "took over 1 s",
        ),
    ],
)
def test_hostile_work_is_refused(text: str, words: str, tmp_path: Path) -> None:
    """Each would take minutes or gigabytes; each is refused with the cap it hit."""
    templates = Templates(tmp_path)
    with pytest.raises(TemplateProblem) as info:
        templates.render(text, templates.context({}))
    assert words in info.value.message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{{ range }}", "'{{ }}' printed the function 'range', not a value; call it"),
        ("{{ lipsum }}", "'{{ }}' printed the function 'lipsum', not a value"),
        ("{{ dict }}", "'{{ }}' printed the class 'dict', not a value"),
        ("{% macro m() %}{% endmacro %}{{ m }}", "printed the macro 'm', not a value"),
        ("{{ joiner() }}", "'{{ }}' printed a Joiner object, not a value; call it"),
        ("{{ cycler(1) }}", "printed '<jinja2.utils.Cycler object at 0x...>', whose memory"),
        ("{{ ['a'] | map('upper') }}", "address gives another text on every plan, so each"),
        ("{{ ['a'] | map('upper') }}", "; add |list to print its items"),
        ("{{ [cycler(1)] }}", "printed '<jinja2.utils.Cycler object at 0x...>'"),
        ("{{ 'x' ~ cycler(1) }}", "'~' joined '<jinja2.utils.Cycler object at 0x...>'"),
        ("{{ 'x' ~ range }}", "'~' joined the function 'range', not a value"),
        # turned into text on the way, however the text is cut or changed afterwards
        ("{{ (joiner() | string)[-6:] }}", "the string filter was given a Joiner object"),
        ("{{ cycler(1) | replace('at 0x', '') }}", "the replace filter was given '<jinja2."),
        ("{{ cycler(1) | urlencode | length }}", "the urlencode filter was given '<jinja2"),
        ("{{ [cycler(1)] | pprint }}", "the pprint filter was given '<jinja2.utils.Cycler"),
        ("{{ {'a': cycler(1)} | tojson }}", "the tojson filter was given '<jinja2.utils.Cyc"),
        ("{{ '%s' | format(lipsum) }}", "the format filter was given the function 'lipsum'"),
        ("{{ ('%r' % [cycler(1)])[:3] }}", "'%' was given '<jinja2.utils.Cycler object at"),
        ("{{ '{}'.format(cycler(1)) | upper }}", "format() was given '<jinja2.utils.Cycler"),
        ("{{ range | string | length }}", "the string filter was given the function 'range'"),
        ("{% macro m() %}{% endmacro %}{{ m | trim }}", "trim filter was given the macro 'm'"),
        ("{{ ['a'] | map(attribute='upper') | join }}", "the join filter was given the func"),
        ("{{ ['a'] | join(attribute='upper') }}", "the join filter was given the function 'u"),
        ("{{ ['a'] | map('upper') | string }}", "; add |list to print its items"),
        ("{{ [cycler(1)] | first | lower }}", "the lower filter was given '<jinja2.utils.Cyc"),
        ("{% set ns = namespace(c=cycler(1)) %}{{ ns | e }}", "the e filter was given '<jin"),
        # a set's order follows string hashes, which differ from one process to the next
        ("{{ ({'a': 1, 'b': 2}.keys() - []) | list }}", "'-' made a set (of a dict's keys"),
        ("{{ ({'a': 1}.items() - []) | join }}", "'-' made a set (of a dict's keys or"),
    ],
)
def test_objects_are_not_printed(text: str, words: str, tmp_path: Path) -> None:
    """A function, or an object whose text is its memory address, printed into a prompt
    would change the request on every plan (and bill it again): refused, named."""
    templates = Templates(tmp_path)
    with pytest.raises(TemplateProblem) as info:
        templates.render(text, templates.context({}))
    assert words in info.value.message


def test_text_that_looks_like_an_address_is_printed(tmp_path: Path) -> None:
    """A value that is text is printed as it is, even one that reads like an address:
    only objects whose text Python makes up from their address are refused."""
    templates = Templates(tmp_path)
    context = templates.context({"note": "<socket at 0x1f>"})
    assert templates.render("{{ note }}", context) == "<socket at 0x1f>"
    assert templates.render("{{ note | upper }}!", context) == "<SOCKET AT 0X1F>!"
