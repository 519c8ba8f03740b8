"""The admin front ends' one query-string parser: what the page writes into its links
reads back to the same filters, under either front end's name for the client filter."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from werkzeug.datastructures import MultiDict

from shared.admin import JobFilters
from shared.admin_filters import (
    API_CLIENT_FIELD,
    PAGE_CLIENT_FIELD,
    filter_pairs,
    job_query_fields,
    parse_hours,
    parse_job_query,
)
from shared.errors import InvalidInputError
from shared.models import JobStatus
from shared.pagination import Cursor

FILTERS = [
    JobFilters(),
    JobFilters(statuses=(JobStatus.FAILED, JobStatus.CANCELED)),
    JobFilters(
        statuses=(JobStatus.QUEUED,),
        client_id=7,
        worker="gpu-01/123",
        created_from=datetime(2026, 1, 1, tzinfo=UTC),
        created_to=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
    ),
]


@pytest.mark.parametrize("client_field", [API_CLIENT_FIELD, PAGE_CLIENT_FIELD])
@pytest.mark.parametrize("filters", FILTERS)
def test_the_pairs_of_filters_read_back_to_the_same_filters(
    filters: JobFilters, client_field: str
) -> None:
    pairs = filter_pairs(filters, client_field=client_field)
    assert {name for name, _ in pairs} <= job_query_fields(client_field=client_field)
    query = parse_job_query(MultiDict(pairs), client_field=client_field)
    assert query.filters == filters
    assert query.cursor is None


def test_each_front_end_reads_the_client_under_its_own_name_only() -> None:
    args = MultiDict([("client", "3"), ("limit", "5")])
    assert parse_job_query(args, client_field=PAGE_CLIENT_FIELD).filters.client_id == 3
    assert parse_job_query(args, client_field=API_CLIENT_FIELD).filters.client_id is None
    with pytest.raises(InvalidInputError) as raised:
        parse_job_query(MultiDict([("client_id", "0")]), client_field=API_CLIENT_FIELD)
    assert (raised.value.field, raised.value.code) == ("client_id", "invalid_client_id")


def test_limit_and_cursor_are_read_after_the_filters() -> None:
    cursor = Cursor(datetime(2026, 1, 1, tzinfo=UTC), uuid.uuid4())
    args = MultiDict([("limit", "5"), ("cursor", cursor.encode())])
    query = parse_job_query(args, client_field=PAGE_CLIENT_FIELD)
    assert (query.limit, query.cursor) == (5, cursor)
    with pytest.raises(InvalidInputError) as raised:  # a bad filter is named before a bad limit
        parse_job_query(MultiDict([("status", "done"), ("limit", "0")]), client_field="client")
    assert raised.value.field == "status"


@pytest.mark.parametrize("raw", ["0", "745", "1_0", "²", "-1", "many"])
def test_hours_outside_one_to_744_are_a_400(raw: str) -> None:
    with pytest.raises(InvalidInputError) as raised:
        parse_hours(raw)
    assert (raised.value.field, raised.value.code) == ("hours", "invalid_hours")


def test_hours_default_to_a_day() -> None:
    assert parse_hours(None) == parse_hours("") == 24
    assert parse_hours(" 744 ") == 744
