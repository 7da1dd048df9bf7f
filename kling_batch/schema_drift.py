"""Schema drift: the kling-o3 description the API serves, against `schemas/kling-o3.json`.

kling-batch validates requests and prices renders from the bundled file; when the API's
own description moves (a parameter, an enum value, a range, a default, a price row), plans
may be refused by the API or priced wrong. `drift` lists every such difference as one
readable line: `+` served only by the API, `-` only in the bundled file, `~` changed.
Descriptions are free text and are not compared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

_Compare = Callable[[Mapping[str, Any], Mapping[str, Any]], list[str]]
# Keys of a parameter entry compared one by one (`enum` is compared value by value).
_PARAMETER_KEYS = ("type", "required", "default", "min", "max", "format", "condition")


def drift(bundled: Mapping[str, Any], served: Mapping[str, Any]) -> list[str]:
    """Every difference of parameters and price rows, one line each (empty: no drift)."""
    return [
        *_entries(
            "parameter",
            bundled.get("supported_parameters"),
            served.get("supported_parameters"),
            "name",
            _parameter,
        ),
        *_entries(
            "price row", bundled.get("pricing_rows"), served.get("pricing_rows"), "label", _row
        ),
    ]


def _entries(kind: str, bundled: Any, served: Any, key: str, compare: _Compare) -> list[str]:
    """Entries matched by `key`: removed, added, and each one's changes."""
    if not isinstance(served, list):
        return [f"~ {kind}s: not served as a list (got {_shown(served)})"]
    old = _by(bundled or [], key)
    new = _by(served, key)
    lines = [f"- {kind} {_shown(name)}: no longer served" for name in old if name not in new]
    lines.extend(
        f"+ {kind} {_shown(name)}: new, {_summary(new[name])}" for name in new if name not in old
    )
    for name in old:
        if name in new:
            lines.extend(
                f"~ {kind} {_shown(name)}: {change}" for change in compare(old[name], new[name])
            )
    return lines


def _by(entries: Sequence[Any], key: str) -> dict[str, Mapping[str, Any]]:
    return {str(e.get(key)): e for e in entries if isinstance(e, Mapping)}


def _parameter(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    changes = []
    for key in _PARAMETER_KEYS:
        if _plain(old.get(key)) != _plain(new.get(key)):
            changes.append(f"{key} {_shown(old.get(key))} → {_shown(new.get(key))}")
    before, after = old.get("enum") or [], new.get("enum") or []
    added = [value for value in after if value not in before]
    dropped = [value for value in before if value not in after]
    if added:
        changes.append("enum adds " + ", ".join(_shown(value) for value in added))
    if dropped:
        changes.append("enum drops " + ", ".join(_shown(value) for value in dropped))
    return changes


def _row(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    changes = []
    if _plain(old.get("price")) != _plain(new.get("price")):
        changes.append(f"price {_price(old.get('price'))} → {_price(new.get('price'))}")
    if _plain(old.get("unit")) != _plain(new.get("unit")):
        changes.append(f"unit {_shown(old.get('unit'))} → {_shown(new.get('unit'))}")
    if _plain(old.get("applies_to")) != _plain(new.get("applies_to")):
        changes.append(
            f"applies to {_shown(old.get('applies_to'))} → {_shown(new.get('applies_to'))}"
        )
    return changes


def _summary(entry: Mapping[str, Any]) -> str:
    if "price" in entry:
        return f"{_price(entry.get('price'))} for {_shown(entry.get('applies_to'))}"
    return f"type {_shown(entry.get('type'))}"


def _plain(value: Any) -> Any:
    """Numbers as exact Decimals (0.28 and 0.280 are one price); the rest as they are."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float | Decimal):
        try:
            return Decimal(str(value)).normalize()
        except InvalidOperation:
            return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _price(value: Any) -> str:
    plain = _plain(value)
    return f"${plain:f}/s" if isinstance(plain, Decimal) else _shown(value)


def _shown(value: Any) -> str:
    plain = _plain(value)
    if isinstance(plain, Decimal):
        return f"{plain:f}"
    if isinstance(plain, Mapping):
        return "{" + ", ".join(f"{k}={_shown(v)}" for k, v in plain.items()) + "}"
    if plain is None:
        return "(none)"
    return repr(plain) if isinstance(plain, str) else str(plain)
