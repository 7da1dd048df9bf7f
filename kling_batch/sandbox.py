"""The Jinja2 sandbox manifests render in, with caps on time, sizes and numbers.

Jinja's sandbox stops templates from reaching Python internals, not from spending the
machine: `{{ 9 ** 999999999 }}`, `{{ 'x' * 10**10 }}` or two nested loops of 10,000 would
hang `plan` or exhaust memory. Every place a template can do a lot of work passes a check
here, and a check that fails raises `TemplateLimit` at once:

- numbers and sequences: the `**`, `*`, `+` and `%` operators (intercepted binary operators)
  and `~` (a code generator hook) refuse results over `INT_MAX_DIGITS` digits or
  `FIELD_MAX_CHARS` characters before computing them;
- calls and filters: a call's input and arguments are measured first; those whose result
  grows with input × argument (`indent`, `center`, `replace`, `join`, ...) must keep the
  product under `CALL_MAX_WORK`; `range()` and `lipsum()` have their own caps; the `sum`
  filter adds numbers only (adding lists or texts is quadratic inside one call, where
  the deadline is not checked);
- output: every `{{ }}` value is measured before it becomes text, and joining output
  (a field, a `{% set %}` block, a macro) stops past `FIELD_MAX_CHARS`;
- sameness: whatever turns a value into text (a `{{ }}` value, a `~` operand, a filter's
  input or argument, `%`'s and a text method's arguments, the items `join` joins) refuses
  a function, class or macro (forgotten parentheses: `{{ range }}`, `{{ joiner() }}`) or
  an object whose text holds a memory address (`<... object at 0x...>`: a cycler, a
  generator, a method), even inside a list, and `-` refuses to make a set (of a dict's
  keys or items: its order follows string hashes, which differ between processes), like
  `lipsum()` and the `random` filter: each would change the request on every plan, billing
  it again. Filters that only pass values on (`list`, `first`, `map`, `sort`, `attr`, ...)
  take anything: what they pass on is checked where it becomes text;
- what is measured: `measure` counts the text a value becomes, through every container
  and `namespace()` (list literals are not checked as they are built, so ten lists of
  ten nested eight deep are small in memory and 100 GB as text); any other object counts
  as a short fixed-size text;
- time: a deadline, checked on every loop iteration (each `for` loop's iterable is wrapped
  by the code generator) and every call. Jinja has no `while`, so a template without loops
  or calls runs in time bounded by its own length; with both checked, no template runs
  much past its deadline. No `sys.settrace`: it would slow every render and is global to
  the interpreter.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import re
import string
import time
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, ValuesView
from typing import Any

from jinja2 import nodes, pass_environment, pass_eval_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.filters import make_attrgetter, sync_do_join
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, Macro, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, _PassArg

from kling_batch.errors import TemplateLimit
from kling_batch.limits import (
    CALL_MAX_WORK,
    FIELD_MAX_CHARS,
    INT_MAX_DIGITS,
    LIPSUM_MAX_WORDS,
    RANGE_MAX,
)

__all__ = ["GuardedEnvironment", "TemplateLimit", "measure"]

_DIGITS_PER_BIT = math.log10(2)
# Calls whose result can grow with the size of their input times an argument.
_GROWING = frozenset(
    {
        "batch",
        "center",
        "expandtabs",
        "indent",
        "join",
        "ljust",
        "replace",
        "rjust",
        "slice",
        "to_bytes",  # an int's bytes: as many as its length argument, made before measured
        "tojson",
        "translate",
        "wordwrap",
        "zfill",
    }
)
# Filters that never make text of their input or arguments, only pass them on (or count,
# compare, sort them): an object without a fixed text may go through them. `join` checks
# the items it joins itself (its input may be a generator).
_PASSING = frozenset(
    {
        "attr",
        "batch",
        "count",
        "d",
        "default",
        "dictsort",
        "first",
        "groupby",
        "items",
        "join",
        "last",
        "length",
        "list",
        "map",
        "max",
        "min",
        "reject",
        "rejectattr",
        "reverse",
        "select",
        "selectattr",
        "slice",
        "sort",
        "sum",
        "unique",
    }
)
# printf-style conversions: `%[(key)][flags][width][.precision]type`.
_PRINTF = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_NUMBER = re.compile(r"\d+")
_LOOP_GUARD = "bounded_loop"
# An object's text when its type gives it none: `<jinja2.utils.Cycler object at 0x7f...>`.
_ADDRESS = re.compile(r"<[^<>]{0,200}\bat 0x[0-9a-f]+>", re.IGNORECASE)
_HEX = re.compile(r"0x[0-9a-f]+", re.IGNORECASE)
# What any other object counts as: its text is of a fixed size, such as a date's or
# `<generator object ... at 0x...>`.
_OBJECT_CHARS = 64
_CONTAINERS = (list, tuple, set, frozenset, dict, KeysView, ValuesView, ItemsView)
# Values whose text is fixed by what they are (an undefined name fails on its own).
_FIXED = (str, bytes, int, float, range, Undefined)


def measure(value: Any, budget: int = CALL_MAX_WORK) -> int:
    """About how many characters `value` takes as text: a string's length, a number's
    digits, one per container item plus its items' (a `namespace()` holds what is set on
    it, a dict's `keys()`/`values()`/`items()` its entries). Any other object counts as
    the fixed-size text of its kind. Stops counting past `budget`."""
    total = 0
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, int):
            total += int(item.bit_length() * _DIGITS_PER_BIT) + 1
        elif isinstance(item, float) or item is None:
            total += len(repr(item))
        elif isinstance(item, range):
            total += len(item) * 2
        elif isinstance(item, _CONTAINERS):
            total += len(item) + 1
            if total <= budget:
                pending.extend(item.items() if isinstance(item, dict) else item)
        elif isinstance(item, Namespace):  # its text is `<Namespace {...}>`: its attributes
            total += _OBJECT_CHARS
            pending.append(object.__getattribute__(item, "_Namespace__attrs"))
        else:
            total += _OBJECT_CHARS
        if total > budget:
            return total
    return total


def _too_long(what: str, size: int | None = None) -> TemplateLimit:
    about = f" (about {size:,})" if size is not None else ""
    return TemplateLimit(f"{what} would be over {FIELD_MAX_CHARS:,} characters{about}")


class GuardedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox plus the caps above; `deadline` is a `perf_counter` time.

    Immutable: `list.append` and friends are refused, so a loop cannot grow a list
    without going through a checked operator.
    """

    intercepted_binops = frozenset({"**", "*", "+", "%", "-"})

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=self._finalize, **options)
        self.code_generator_class = _GuardedCodeGenerator
        self.deadline = math.inf
        self.deadline_message = "the template took too long"
        self.globals["range"] = _range
        self.globals["lipsum"] = _lipsum
        self.filters["random"] = _random
        self.filters["sum"] = _sum
        self.filters["join"] = _join
        for name, func in list(self.filters.items()):
            self.filters[name] = self._guard_filter(name, func)

    def check_deadline(self) -> None:
        """Raise `TemplateLimit` once the render is past its deadline."""
        if time.perf_counter() > self.deadline:
            raise TemplateLimit(self.deadline_message)

    @staticmethod
    def concat(parts: Iterable[str]) -> str:
        """Join output (a field, a `{% set %}` block, a macro); refuse it past the cap."""
        collected: list[str] = []
        size = 0
        for part in parts:
            size += len(part)
            if size > FIELD_MAX_CHARS:
                raise _too_long("the rendered text")
            collected.append(part)
        return "".join(collected)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """`**`, `*`, `+`, `%` and `-`, refused before computing a result over the caps;
        `-` refused a set as its result."""
        self.check_deadline()
        _check_binop(operator, left, right)
        result = super().call_binop(context, operator, left, right)
        if isinstance(result, set | frozenset):
            raise TemplateLimit(
                f"'-' made a set (of a dict's keys or items), whose order {_CHANCE}; "
                "drop items with reject('in', [...]) instead"
            )
        return result

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Every call a template makes: deadline, then the same checks as filters."""
        self.check_deadline()
        if isinstance(obj, Macro) or getattr(obj, "__func__", None) is _BOUNDED_LOOP:
            return super().call(context, obj, *args, **kwargs)
        target = getattr(obj, "__wrapped__", obj)  # Jinja wraps str.format in a function
        name = getattr(target, "__name__", "a call").lstrip("_")
        owner = getattr(target, "__self__", None)
        value = owner if isinstance(owner, str | list | tuple | dict) else None
        if isinstance(owner, str) and name == "join" and args and isinstance(args[0], Iterator):
            # `', '.join(x | map(...))`: the generator's items become text (only `str`
            # ones: `str.join` takes no other), never the generator itself
            args = (list(args[0]), *args[1:])
        _check_call(name, value, args, kwargs)
        if isinstance(owner, str):  # `'{}'.format(x)`: its arguments become text
            _check_fixed((args, kwargs), f"{name}() was given")
        if name in ("format", "format_map") and isinstance(owner, str):
            _check_format(owner)
        result = super().call(context, obj, *args, **kwargs)
        _check_result(result)
        return result

    def checked_parts(self, parts: tuple[Any, ...]) -> tuple[Any, ...]:
        """The operands of `~`, measured and checked as text before they are joined."""
        size = sum(measure(part) for part in parts)
        if size > FIELD_MAX_CHARS:
            raise _too_long("a '~' result", size)
        for part in parts:
            _as_text(part, "'~' joined")
        return parts

    def bounded_loop(self, iterable: Any) -> Iterator[Any]:
        """A `for` loop's iterable, checking the deadline before each item."""
        for item in iterable:
            self.check_deadline()
            yield item

    def _finalize(self, value: Any) -> Any:
        size = measure(value, FIELD_MAX_CHARS)
        if size > FIELD_MAX_CHARS:
            raise _too_long("an output value", size)
        return _as_text(value, "'{{ }}' printed")

    def _guard_filter(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        skip = 1 if _PassArg.from_obj(func) is not None else 0

        @functools.wraps(func)  # keeps Jinja's pass_context / pass_environment marks
        def guarded(*args: Any, **kwargs: Any) -> Any:
            self.check_deadline()
            value = args[skip] if len(args) > skip else None
            _check_call(name, value, args[skip + 1 :], kwargs)
            if name not in _PASSING:
                _check_fixed((value, args[skip + 1 :], kwargs), f"the {name} filter was given")
            if name == "format" and isinstance(value, str):
                _check_printf(value)
            result = func(*args, **kwargs)
            _check_result(result)
            return result

        return guarded


_BOUNDED_LOOP = GuardedEnvironment.bounded_loop


class _GuardedCodeGenerator(CodeGenerator):
    """Jinja's code generator with each loop's iterable wrapped and `~` measured."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        guarded = copy.copy(node)
        guarded.iter = nodes.Call(
            nodes.EnvironmentAttribute(_LOOP_GUARD), [node.iter], [], None, None
        ).set_lineno(node.lineno)
        super().visit_For(guarded, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # Jinja's own, with the parts passed through `checked_parts` before the join.
        if frame.eval_ctx.volatile:
            func_name = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            func_name = "markup_join"
        else:
            func_name = "str_join"
        self.write(f"{func_name}(environment.checked_parts((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(")))")


def _as_text(value: Any, where: str) -> Any:
    """`value`'s text (a number or an undefined name as it is: Jinja converts those),
    refused as `_check_fixed` says."""
    if isinstance(value, Undefined | int | float) or value is None:
        return value
    _check_fixed(value, where)
    return value if isinstance(value, str) else str(value)


def _check_fixed(value: Any, where: str) -> None:
    """Refuse `value` when it holds (through containers and `namespace()`s) a function,
    class or macro (forgotten parentheses) or an object whose text holds a memory address,
    as objects without a text of their own show: their text changes from run to run."""
    pending = [value]
    seen = 0
    while pending and seen <= CALL_MAX_WORK:
        item = pending.pop()
        seen += 1
        if isinstance(item, _FIXED) or item is None:
            continue
        if isinstance(item, _CONTAINERS):
            pending.extend(item.items() if isinstance(item, dict) else item)
        elif isinstance(item, Namespace):
            pending.append(object.__getattribute__(item, "_Namespace__attrs"))
        elif callable(item):
            raise TemplateLimit(f"{where} {_named(item)}, not a value; call it (add parentheses)")
        else:
            address = _ADDRESS.search(repr(item)) or _ADDRESS.search(str(item))
            if address is not None:
                shown = _HEX.sub("0x...", address.group())[:100]
                hint = "; add |list to print its items" if isinstance(item, Iterator) else ""
                raise TemplateLimit(f"{where} '{shown}', whose memory address {_CHANCE}{hint}")


def _named(value: Any) -> str:
    if isinstance(value, type):
        return f"the class {value.__name__!r}"
    if isinstance(value, Macro):
        return f"the macro {value.name!r}"
    if inspect.isroutine(value):
        return f"the function {value.__name__.lstrip('_')!r}"
    return f"a {type(value).__name__} object"


def _check_binop(operator: str, left: Any, right: Any) -> None:
    ints = isinstance(left, int) and isinstance(right, int)
    if operator == "**" and ints and right > 0 and abs(left) > 1:
        digits = right * math.log10(abs(left))
        if digits > INT_MAX_DIGITS:
            raise TemplateLimit(
                f"{operator!r} would make a number of about {digits:,.0f} digits; "
                f"templates compute numbers of at most {INT_MAX_DIGITS:,} digits"
            )
    elif operator == "*" and ints:
        digits = (left.bit_length() + right.bit_length()) * _DIGITS_PER_BIT
        if digits > INT_MAX_DIGITS:
            raise TemplateLimit(
                f"'*' would make a number of about {digits:,.0f} digits; "
                f"templates compute numbers of at most {INT_MAX_DIGITS:,} digits"
            )
    elif operator == "*" and (isinstance(left, int) or isinstance(right, int)):
        times, sequence = (left, right) if isinstance(left, int) else (right, left)
        size = measure(sequence) * max(times, 0)
        if size > FIELD_MAX_CHARS:
            raise _too_long("a '*' repetition", size)
    elif operator == "+" and not ints:
        size = measure(left) + measure(right)
        if size > FIELD_MAX_CHARS:
            raise _too_long("a '+' result", size)
    elif operator == "%" and isinstance(left, str):
        _check_printf(left)
        _check_call("%", None, (right,), {})
        _check_fixed(right, "'%' was given")


def _check_call(name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse a call whose input or arguments are over the caps, or whose result would be."""
    arguments = [*args, *kwargs.values()]
    size = measure(value)
    if size > CALL_MAX_WORK or any(measure(a) > CALL_MAX_WORK for a in arguments):
        raise TemplateLimit(f"{name}() was given over {CALL_MAX_WORK:,} characters")
    if name in _GROWING:
        largest = max((_argument_size(a) for a in arguments), default=0)
        if (size + 1) * (largest + 1) > CALL_MAX_WORK:
            raise TemplateLimit(
                f"{name}() would do too much work ({size:,} characters × {largest:,}); "
                f"the limit is {CALL_MAX_WORK:,}"
            )


def _argument_size(argument: Any) -> int:
    # A number given to a call is a width or a count; anything else, its size as text.
    if isinstance(argument, bool) or argument is None:
        return 0
    if isinstance(argument, int):
        return abs(argument)
    if isinstance(argument, float):
        return int(min(abs(argument), CALL_MAX_WORK + 1)) if math.isfinite(argument) else 0
    return measure(argument)


def _check_result(result: Any) -> None:
    size = measure(result)
    if size > CALL_MAX_WORK:
        raise TemplateLimit(f"a call returned over {CALL_MAX_WORK:,} characters")


def _check_printf(template: str) -> None:
    for width, precision in _PRINTF.findall(template):
        for number in (width, precision):
            if number == "*" or (number and int(number) > FIELD_MAX_CHARS):
                raise TemplateLimit(
                    f"a '%' format width or precision over {FIELD_MAX_CHARS:,} (or '*')"
                )


def _check_format(template: str) -> None:
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError:
        return  # str.format raises the same error itself
    for _literal, _name, spec, _conversion in fields:
        if spec and "{" in spec:
            raise TemplateLimit("nested '{}' fields in a format spec are not supported")
        if spec and any(int(n) > FIELD_MAX_CHARS for n in _NUMBER.findall(spec)):
            raise TemplateLimit(f"a format width or precision over {FIELD_MAX_CHARS:,}")


def _range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > RANGE_MAX:
        raise TemplateLimit(
            f"range() of {len(numbers):,} numbers; templates may loop over at most {RANGE_MAX:,}"
        )
    return numbers


# A template must render the same text on every plan: a random one would change the
# request, so every plan would render and bill it again (and a warm plan cache would
# disagree with a cold one).
_CHANCE = "gives another text on every plan, so each plan would render and bill it again"


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    if n * max > LIPSUM_MAX_WORDS:
        raise TemplateLimit(
            f"lipsum() of up to {n * max:,} words; the limit is {LIPSUM_MAX_WORDS:,}"
        )
    raise TemplateLimit(f"lipsum() {_CHANCE}; write the text itself")


def _random(value: Any) -> Any:
    raise TemplateLimit(f"the random filter {_CHANCE}; pick the value, or use a matrix")


@pass_eval_context
def _join(
    eval_ctx: EvalContext, value: Iterable[Any], d: str = "", attribute: str | int | None = None
) -> str:
    """Jinja's `join` filter with the items it joins (and its separator) checked as text
    first: its input may be a generator, whose items are seen only here."""
    items = list(value)
    if attribute is not None:
        items = list(map(make_attrgetter(eval_ctx.environment, attribute), items))
    _check_call("join", items, (d,), {})
    _check_fixed((items, d), "the join filter was given")
    return sync_do_join(eval_ctx, items, d)


@pass_environment
def _sum(
    environment: GuardedEnvironment,
    iterable: Iterable[Any],
    attribute: str | int | None = None,
    start: Any = 0,
) -> Any:
    """Jinja's `sum` filter for numbers only: adding lists or texts copies the total so
    far at each item, work that grows with the square of the items in one call, which
    the deadline cannot stop (and no prompt needs)."""
    if attribute is not None:
        iterable = map(make_attrgetter(environment, attribute), iterable)
    values = list(iterable)
    for what, value in (("its start", start), *(("an item", value) for value in values)):
        if not isinstance(value, int | float | Undefined):  # an undefined one fails in sum()
            raise TemplateLimit(
                f"the sum filter adds numbers only, and {what} is {_kind(value)}; "
                "join lists with '+' and texts with the join filter"
            )
    return sum(values, start)


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return "a text"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"
