"""The job list page by page, whatever pagination the API turns out to use (§3.2 unknown)."""

from __future__ import annotations

import httpx
import pytest

from kling_batch.joblist import JobPage

pytestmark = pytest.mark.anyio

LIST = "/v1/jobs"


def jobs(*ids: str) -> list[dict[str, str]]:
    return [{"job_id": job_id, "status": "completed"} for job_id in ids]


async def read_all(client, limit: int = 2) -> tuple[list[str], JobPage]:
    """Follow the list's own way on from page to page; every job id read and the last page."""
    page = await client.list_jobs_page(limit=limit)
    read = [job.job_id for job in page.jobs]
    while not page.ended and page.next is not None:
        page = await client.list_jobs_page(limit=limit, page=page.next)
        read += [job.job_id for job in page.jobs]
    return read, page


LAST = {"data": jobs("e"), "has_more": False}

SHAPES = {
    "openai-last-id": (
        [
            {"data": jobs("a", "b"), "has_more": True, "last_id": "b"},
            {"data": jobs("c", "d"), "has_more": True, "last_id": "d"},
        ],
        [{"after": "b"}, {"after": "d"}],
    ),
    "next-cursor": (
        [
            {"data": jobs("a", "b"), "next_cursor": "c1"},
            {"data": jobs("c", "d"), "next_cursor": "c2"},
        ],
        [{"cursor": "c1"}, {"cursor": "c2"}],
    ),
    "pagination-token": (
        [
            {"jobs": jobs("a", "b"), "pagination": {"has_more": True, "next_page_token": "t1"}},
            {"jobs": jobs("c", "d"), "pagination": {"has_more": True, "next_page_token": "t2"}},
        ],
        [{"page_token": "t1"}, {"page_token": "t2"}],
    ),
    "next-url": (
        [
            {"data": jobs("a", "b"), "next": "/v1/jobs?page=2&limit=2"},
            {
                "data": jobs("c", "d"),
                "links": {"next": "https://api.empiriolabs.ai/v1/jobs?page=3"},
            },
        ],
        [{"page": "2", "limit": "2"}, {"page": "3"}],
    ),
    "page-number": (
        [{"data": jobs("a", "b"), "next_page": 2}, {"data": jobs("c", "d"), "next_page": 3}],
        [{"page": "2"}, {"page": "3"}],
    ),
}


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_every_page_is_read_whatever_the_cursor(api, make_client, shape):
    """The way on is followed as the API offers it, until the list says it ended."""
    pages, wanted = SHAPES[shape]
    api.on("GET", LIST, *pages, LAST)
    async with make_client() as client:
        read, last = await read_all(client)
    assert read == ["a", "b", "c", "d", "e"]
    assert last.ended
    sent = [dict(seen.request.url.params) for seen in api.seen[1:]]
    assert [
        {k: v for k, v in params.items() if k in want}
        for params, want in zip(sent, wanted, strict=True)
    ] == wanted


async def test_link_header_is_followed(api, make_client):
    """A `Link: <…>; rel="next"` header is a way on too."""
    link = {"Link": '<https://api.empiriolabs.ai/v1/jobs?after=b>; rel="next"'}
    api.on("GET", LIST, httpx.Response(200, json={"data": jobs("a", "b")}, headers=link), LAST)
    async with make_client() as client:
        read, _ = await read_all(client)
    assert read == ["a", "b", "e"]
    assert api.seen[1].request.url.params["after"] == "b"


@pytest.mark.parametrize(
    "payload",
    [
        {"data": jobs("a", "b"), "has_more": True},
        {"data": jobs("a", "b"), "has_more": True, "next": "https://elsewhere.example/v1/jobs?p=2"},
        httpx.Response(200, json=jobs("a", "b")),  # a bare list as long as the limit
    ],
    ids=["has-more-only", "foreign-next-url", "full-bare-list"],
)
async def test_more_jobs_without_a_way_on_is_a_dead_end(api, make_client, payload):
    """A page that may be followed by more but offers no usable way on: neither ended nor
    followed (a URL off the API origin is never requested)."""
    api.on("GET", LIST, payload)
    async with make_client() as client:
        page = await client.list_jobs_page(limit=2)
    assert (page.ended, page.next) == (False, None)
    assert len(api.seen) == 1


async def test_a_bare_page_of_the_default_size_is_not_taken_for_the_end(api, make_client):
    """100 jobs asked for, 25 sent and nothing said about more: an API that ignores the
    limit sends its default page of 25, so the list may go on (a look that took it for the
    whole list would send again a submission whose job is older than those 25)."""
    api.on("GET", LIST, httpx.Response(200, json=jobs(*(f"j{n}" for n in range(25)))))
    async with make_client() as client:
        page = await client.list_jobs_page(limit=100)
    assert len(page.jobs) == 25
    assert not page.ended


async def test_short_bare_list_is_the_whole_list(api, make_client):
    """A bare list shorter than the limit, with nothing said about more, is the end."""
    api.on("GET", LIST, httpx.Response(200, json=jobs("a")))
    async with make_client() as client:
        page = await client.list_jobs_page(limit=2)
    assert page.ended
