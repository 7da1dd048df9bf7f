"""The pull-request comment's escaping: text from the lockfile or the manifest stays text."""

from __future__ import annotations

import pytest

from kling_batch import markdown


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("prompt changed", "prompt changed"),
        ("model_tier: standard → pro", "model_tier: standard → pro"),
        ("(cost) is not paid; done!", "(cost) is not paid; done!"),
        ('<img src="https://e.example/p.png">', '&lt;img src="https://e.example/p.png"&gt;'),
        ("<!-- x --> &amp;", "&lt;!-- x --&gt; &amp;amp;"),
        ("[Approve](https://e.example)", "\\[Approve\\](https://e.example)"),
        ("![x](https://e.example/p.png)", "!\\[x\\](https://e.example/p.png)"),
        ("`code` *b* _i_ ~s~ $m$", "\\`code\\` \\*b\\* \\_i\\_ \\~s\\~ \\$m\\$"),
        ("a | b \\", "a \\| b \\\\"),
        ("one\ntwo\r\nthree\u2028four", "one two three four"),
        ("# heading", "\\# heading"),
        ("- item", "\\- item"),
        ("1. item", "1\\. item"),
        ("## two", "\\## two"),
        ("\u202egnp.exe\u2066\u200b\ufeff\x07", "gnp.exe"),
        ("👩\u200d💻", "👩\u200d💻"),
    ],
)
def test_escape_leaves_nothing_active(text: str, escaped: str) -> None:
    """HTML, links, images, emphasis, code, strikethrough, math, pipes, line breaks and
    block markers are inert; invisible and bidi characters go; plain words stay as they are."""
    assert markdown.escape(text) == escaped


@pytest.mark.parametrize(
    ("text", "cell", "shown"),
    [
        ("teaser", False, "`teaser`"),
        ("a`b", False, "``a`b``"),
        ("x` <b>y</b> `", False, "`` x` <b>y</b> ` ``"),
        ("a\u202eb\nc", False, "`ab c`"),
        ("a|b", True, "`a\\|b`"),
        ("a|b", False, "`a|b`"),
    ],
)
def test_code_cannot_be_broken_out_of(text: str, cell: bool, shown: str) -> None:
    """Inline code is fenced longer than any backtick run, on one line, without invisible
    characters, its pipes escaped in a table cell."""
    assert markdown.code(text, cell=cell) == shown


def test_a_prompt_diff_keeps_no_invisible_character() -> None:
    """A bidi override cannot reorder what a prompt's diff shows."""
    assert markdown.fenced("dawn \u202eover\nharbour") == ["```text", "dawn over", "harbour", "```"]
