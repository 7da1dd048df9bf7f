"""Jinja2 for manifests: sandboxed, strict about undefined names, includes kept in one folder."""

from __future__ import annotations

import keyword
import math
import os
import re
import time
import unicodedata
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2
from jinja2 import meta

from kling_batch.errors import TemplateProblem, UserError
from kling_batch.limits import FIELD_MAX_CHARS, RENDER_SECONDS, TEMPLATES_SECONDS
from kling_batch.partials import partial_digest_of, partial_source
from kling_batch.sandbox import GuardedEnvironment, TemplateLimit

_SLUG_DROP = re.compile(r"[^a-z0-9]+")
_TEMPLATE_MARKERS = ("{{", "{%", "{#")
# `{{ name }}`: the one expression rendered without Jinja (see `_simple`).
_BARE_NAME = re.compile(r"\{\{[ \t]*([A-Za-z_][A-Za-z0-9_]*)[ \t]*\}\}")
# Names Jinja reads as constants or treats specially, never as a plain lookup.
_NOT_PLAIN = frozenset(keyword.kwlist) | {
    "true",
    "false",
    "none",
    "self",
    "loop",
    "caller",
    "varargs",
    "kwargs",
    "super",
}


def slug(value: object) -> str:
    """`"Trail Shoe ü"` → `"trail-shoe-u"`: lowercase ASCII words joined by dashes."""
    text = unicodedata.normalize("NFKD", str(value)).encode("ascii", "ignore").decode()
    return _SLUG_DROP.sub("-", text.lower()).strip("-")


class FolderLoader(jinja2.BaseLoader):
    """Loads `{% include %}` targets from one folder; nothing outside it, symlinks included.

    Every name asked for is remembered with its `partial_digest` (`read`): the plan cache
    keeps shots expanded with these partials only while each is still the same.
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.read: dict[str, str] = {}

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        self.read[template] = "refused"
        try:
            candidate, source = partial_source(self.root, template)
        except UserError as exc:
            raise TemplateLimit(f"include {template!r}: {exc.message}") from None
        if candidate is None:
            self.read[template] = "missing"
            raise jinja2.TemplateNotFound(source)
        self.read[template] = partial_digest_of(source)
        mtime = candidate.stat().st_mtime_ns

        def uptodate() -> bool:
            try:
                return candidate.stat().st_mtime_ns == mtime
            except OSError:
                return False

        return source, str(candidate), uptodate


class Templates:
    """Compiles each distinct template once and renders it against a context."""

    def __init__(self, root: Path) -> None:
        self.loader = FolderLoader(root)
        self.env = GuardedEnvironment(
            loader=self.loader,
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=False,
            auto_reload=False,
        )
        self.env.filters["slug"] = slug
        self._compiled: dict[str, tuple[jinja2.Template, frozenset[str] | None]] = {}
        self._simple: dict[str, tuple[list[str], list[str]] | None] = {}
        self._seconds_left = TEMPLATES_SECONDS

    @staticmethod
    def is_template(text: str) -> bool:
        """True when `text` holds Jinja syntax; plain strings skip the engine."""
        return any(marker in text for marker in _TEMPLATE_MARKERS)

    def names_used(self, text: str) -> frozenset[str] | None:
        """Top-level names a template reads, or None when it includes other templates."""
        simple = self._simple_parts(text)
        if simple is not None:
            return frozenset(simple[1])
        return self._compile(text)[1]

    def context(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A render context: Jinja's globals (range, dict, ...) under the given values."""
        return {**self.env.globals, **values}

    def render(self, text: str, context: Mapping[str, Any]) -> str:
        """Render `text` against a context from `context()`; raise `TemplateProblem`.

        The context is shared with Jinja rather than copied per render (2-3× faster on
        a 10,000-render matrix); on failure the template is rendered again the ordinary
        way so the error carries Jinja's template line numbers. A render runs against a
        deadline (`RENDER_SECONDS`, and what is left of `TEMPLATES_SECONDS` for the plan).
        """
        if not self.is_template(text):
            if len(text) > FIELD_MAX_CHARS:
                raise TemplateProblem(f"the text is over {FIELD_MAX_CHARS:,} characters", None)
            return text
        simple = self._simple_parts(text)
        if simple is not None:
            rendered = self._render_simple(*simple, context)
            if rendered is not None:
                return rendered
        template, _ = self._compile(text)
        started = time.perf_counter()
        self._arm_deadline(started)
        try:
            return self._render(template, context)
        finally:
            self.env.deadline = math.inf
            self._seconds_left -= time.perf_counter() - started

    def _simple_parts(self, text: str) -> tuple[list[str], list[str]] | None:
        """A template of text and `{{ name }}` only, as its texts and names; else None.

        Issue 13: compiling a template takes Jinja half a millisecond, and 10,000 listed
        shots each have a prompt of their own. Such a template renders exactly as Jinja
        would render it: Jinja copies text unchanged (no line breaks to normalise, no
        final one to drop: those are left to Jinja) and writes `str(finalize(value))` for
        a name it finds. A `{` just before `{{`, any other tag, filter or expression
        leaves the template to Jinja.
        """
        if text in self._simple:
            return self._simple[text]
        parts = _BARE_NAME.split(text)
        texts, names = parts[0::2], parts[1::2]
        plain = (
            "{%" not in text
            and "{#" not in text
            and "\r" not in text
            and not text.endswith("\n")
            and not any("{{" in part or part.endswith("{") for part in texts)
            and not any(name in _NOT_PLAIN for name in names)
        )
        self._simple[text] = (texts, names) if plain else None
        return self._simple[text]

    def _render_simple(
        self, texts: list[str], names: list[str], context: Mapping[str, Any]
    ) -> str | None:
        """A simple template rendered; None when Jinja must (an undefined name, a value
        over the caps: Jinja says why)."""
        out = [texts[0]]
        for name, text in zip(names, texts[1:], strict=True):
            if name not in context:
                return None
            try:
                value = self.env.finalize(context[name])  # type: ignore[misc]
            except TemplateLimit:
                return None
            out.append(str(value))
            out.append(text)
        rendered = "".join(out)
        return rendered if len(rendered) <= FIELD_MAX_CHARS else None

    def _arm_deadline(self, now: float) -> None:
        if self._seconds_left < RENDER_SECONDS:
            self.env.deadline_message = (
                f"the manifest's templates took over {TEMPLATES_SECONDS:g} s in all"
            )
        else:
            self.env.deadline_message = f"the template took over {RENDER_SECONDS:g} s to render"
        self.env.deadline = now + min(RENDER_SECONDS, self._seconds_left)

    def _render(self, template: jinja2.Template, context: Mapping[str, Any]) -> str:
        shared = context if isinstance(context, dict) else dict(context)
        try:
            return self.env.concat(
                template.root_render_func(template.new_context(shared, shared=True))
            )
        except TemplateLimit as exc:
            raise TemplateProblem(str(exc), None) from None
        except MemoryError:
            raise TemplateProblem("the template needs more memory than there is", None) from None
        except Exception:
            pass  # rendered again below, for an error message with template lines
        try:
            return template.render(context)
        except TemplateLimit as exc:
            raise TemplateProblem(str(exc), None) from None
        except jinja2.TemplateError as exc:
            raise TemplateProblem(_describe(exc), *self._where(exc)) from exc
        except RecursionError:
            raise TemplateProblem("the template recurses without end", None) from None
        except (TypeError, ValueError, ArithmeticError, AttributeError, LookupError) as exc:
            raise TemplateProblem(str(exc), *self._where(exc)) from exc

    def _where(self, exc: BaseException) -> tuple[int | None, str | None]:
        """The line of the innermost template frame (Jinja rewrites tracebacks to show them)
        and, when that frame is an included partial's, its name as included."""
        if isinstance(exc, jinja2.TemplateSyntaxError):
            return exc.lineno, exc.name
        line, partial = None, None
        root = str(self.loader.root)
        tb: TracebackType | None = exc.__traceback__
        while tb is not None:
            filename = tb.tb_frame.f_code.co_filename
            if filename == "<template>":
                line, partial = tb.tb_lineno, None
            elif filename.startswith(root + os.sep):
                line, partial = tb.tb_lineno, Path(filename).relative_to(root).as_posix()
            tb = tb.tb_next
        return line, partial

    def _compile(self, text: str) -> tuple[jinja2.Template, frozenset[str] | None]:
        cached = self._compiled.get(text)
        if cached is not None:
            return cached
        try:
            ast = self.env.parse(text)
            template = self.env.from_string(ast)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateProblem(f"template syntax error: {exc.message}", exc.lineno) from exc
        except TemplateLimit as exc:  # a constant folded at compile time
            raise TemplateProblem(str(exc), None) from None
        includes = any(True for _ in meta.find_referenced_templates(ast))
        names = None if includes else frozenset(meta.find_undeclared_variables(ast))
        self._compiled[text] = (template, names)
        return template, names


def _describe(exc: jinja2.TemplateError) -> str:
    if isinstance(exc, jinja2.UndefinedError):
        return f"undefined: {exc.message}"
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return f"refused by the template sandbox: {exc.message}"
    if isinstance(exc, jinja2.TemplateNotFound):
        return f"include not found: {exc.message}"
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"template syntax error: {exc.message}"
    return exc.message or type(exc).__name__
