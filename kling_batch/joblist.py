"""One page of the API's job list, read tolerantly, and the way to the page after it.

The REST shape of the list is unknown (API reference §3.2: the capability is confirmed,
the path and pagination are not). A page may be the list itself, or an object holding it
under `data` or `jobs`. The way on may be a URL (`next`, `next_url`, `next_page_url`,
`links.next`, a `Link: rel="next"` header), an opaque cursor (`next_cursor`,
`next_page_token`, `cursor`…, sent back as the matching query parameter), a page number
(`next_page`), or, OpenAI style, `has_more` with `last_id` (sent back as `after`). These
keys are also looked for inside `pagination`, `paging`, `meta`, `links` and
`response_metadata`. A page that says `has_more` but offers none of them is a dead end,
never a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kling_batch.errors import MalformedResponse
from kling_batch.payloads import JobState, parse_job

# Where the way to the next page may sit, besides the top level of the answer.
_CONTAINERS = ("pagination", "paging", "meta", "links", "response_metadata")
_URL_KEYS = ("next", "next_url", "next_page_url", "next_page", "nextPage")
# An opaque cursor in the answer → the query parameter that sends it back.
_CURSOR_KEYS = {
    "next_cursor": "cursor",
    "nextCursor": "cursor",
    "next_page_token": "page_token",
    "nextPageToken": "pageToken",
    "next_token": "next_token",
    "cursor": "cursor",
    "next": "cursor",
}
_MORE_KEYS = ("has_more", "hasMore", "more")
# The job list's default page (API reference §3.2: 25 jobs unless `limit` says otherwise,
# at most 100). A REST list that ignores the limit asked for answers with this many and
# may say nothing of more: only a page shorter than both proves it is the last.
DEFAULT_PAGE = 25


@dataclass(frozen=True)
class NextPage:
    """How to ask for the page after one: a URL the API gave, or query parameters to add."""

    url: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JobPage:
    """One page of jobs, newest first, and what it says about the rest of the list."""

    jobs: list[JobState]
    # True when the API says (or shows) that no job follows this page.
    ended: bool
    # How to ask for the next page; None when the answer offers no way on.
    next: NextPage | None = None


def parse_job_page(payload: Any, *, limit: int, link_next: str | None = None) -> JobPage:
    """A `JobPage` from a decoded answer; `link_next` is a `Link: rel="next"` URL, if any.

    The list has ended when the answer says `has_more: false`; when it does not say, when
    it offers no way on and holds fewer jobs than asked for and than `DEFAULT_PAGE` (a
    page of 25 may be all an API that ignores the limit sends: a look taking it for the
    whole list could send again a submission whose job is on the next page).
    """
    items = payload
    if isinstance(payload, Mapping):
        items = payload.get("data", payload.get("jobs"))
    if not isinstance(items, list):
        raise MalformedResponse("the response holds no list of jobs")
    jobs = [parse_job(item) for item in items if isinstance(item, Mapping)]
    answer: Mapping[str, Any] = payload if isinstance(payload, Mapping) else {}
    more = _has_more(answer)
    if more is False:
        return JobPage(jobs, ended=True)
    way = NextPage(url=link_next) if link_next else _next_page(answer, more=more is True)
    ended = more is None and way is None and len(items) < min(limit, DEFAULT_PAGE)
    return JobPage(jobs, ended=ended, next=way)


def _places(answer: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The answer, then each pagination object inside it."""
    inner = [answer.get(key) for key in _CONTAINERS]
    return [answer, *(place for place in inner if isinstance(place, Mapping))]


def _has_more(answer: Mapping[str, Any]) -> bool | None:
    """What the answer says about more jobs after this page; None if it does not say."""
    for place in _places(answer):
        for key in _MORE_KEYS:
            value = place.get(key)
            if isinstance(value, bool):
                return value
    return None


def _next_page(answer: Mapping[str, Any], *, more: bool) -> NextPage | None:
    """The first way to the next page the answer offers, or None."""
    for place in _places(answer):
        for key in _URL_KEYS:
            value = place.get(key)
            if isinstance(value, str) and value.startswith(("http://", "https://", "/", "?")):
                return NextPage(url=value)
        for key, param in _CURSOR_KEYS.items():
            value = place.get(key)
            if isinstance(value, str) and value and not value.startswith(("/", "?", "http")):
                return NextPage(params={param: value})
        number = place.get("next_page")
        if isinstance(number, int) and not isinstance(number, bool):
            return NextPage(params={"page": str(number)})
        last = place.get("last_id")
        if more and isinstance(last, str) and last:
            return NextPage(params={"after": last})
    return None
