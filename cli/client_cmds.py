"""The client commands: submit, status, list, cancel, result, webhooks — over
client.StylequeueClient.

They find the server and key in ``STYLEQUEUE_URL`` and ``STYLEQUEUE_API_KEY``.
Tests (or a wrapper program) pass a ``ClientConfig`` as click's ``obj`` to build
the client another way, for example over ``httpx.WSGITransport``.
Output is for people by default and JSON with ``--json``; every error is one
line on stderr and a non-zero exit: 1 for an error, 2 for a usage error, 3 when
the job ended otherwise than asked (``submit --wait``: it failed or was canceled;
``cancel``: it had already succeeded or failed).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from cli.params import parse_params
from client import (
    APIError,
    Job,
    JobStatus,
    RateLimitedError,
    StylequeueClient,
    StylequeueClientError,
    TransportError,
    WebhookDelivery,
)
from client.text import (
    describe_cancel,
    describe_image_problem,
    describe_job,
    format_progress,
    job_table,
    text_table,
    warning_line,
)

ENV_URL = "STYLEQUEUE_URL"
ENV_API_KEY = "STYLEQUEUE_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_LIST_LIMIT = 20  # jobs that `list` shows unless told otherwise
LIST_PAGE_SIZE = 50  # jobs per request while `list` pages through
EXIT_JOB_NOT_SUCCEEDED = 3  # `submit --wait`: the job failed or was canceled
EXIT_NOTHING_TO_CANCEL = 3  # `cancel`: the job had already succeeded or failed
EXIT_INTERRUPTED = 130  # Ctrl-C while waiting (the job goes on on the server)

# The end of every client command's --help: where it finds the server and the key.
ENVIRONMENT_HELP = f"""\b
Environment:
  {ENV_URL}      the API's base URL (default {DEFAULT_URL})
  {ENV_API_KEY}  your API key, required (`stylequeue keys create NAME`)"""

SUBMIT_EXIT_HELP = f"""\b
Exit status:
  0    submitted (with --wait: the job succeeded and its result is saved)
  1    an error, one line on stderr: a bad parameter or image, the server
       refused or cannot be reached, or --timeout ran out (the job goes on)
  2    a usage error (a missing file, a bad option)
  {EXIT_JOB_NOT_SUCCEEDED}    with --wait: the job failed or was canceled (the reason on stderr)
  {EXIT_INTERRUPTED}  with --wait: interrupted by Ctrl-C (the job goes on)"""

CANCEL_EXIT_HELP = f"""\b
Exit status:
  0    canceled, or (a running job) the cancel is requested
  1    an error on one line: no such job, or the server cannot be reached
  {EXIT_NOTHING_TO_CANCEL}    the job had already succeeded or failed: nothing was canceled"""


@dataclass(frozen=True)
class ClientConfig:
    """How the client commands build their client; pass one as click's ``obj``."""

    make_client: Callable[[], StylequeueClient]


class JobNotSucceeded(click.ClickException):
    """Raised when ``submit --wait`` sees the job end failed or canceled."""

    exit_code = EXIT_JOB_NOT_SUCCEEDED


class NothingToCancel(click.ClickException):
    """Raised when ``cancel`` finds the job already succeeded or failed."""

    exit_code = EXIT_NOTHING_TO_CANCEL


class WaitInterrupted(click.ClickException):
    """Raised when Ctrl-C stops ``submit --wait``; the job itself goes on."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, job_id: str) -> None:
        super().__init__(f"stopped waiting; job {job_id} goes on (stylequeue status {job_id})")


def client_from_env(environ: Mapping[str, str]) -> StylequeueClient:
    """A client for ``STYLEQUEUE_URL`` with ``STYLEQUEUE_API_KEY``; a bad value names its variable."""
    url = environ.get(ENV_URL, "").strip() or DEFAULT_URL
    if not url.startswith(("http://", "https://")):
        raise click.ClickException(f"{ENV_URL}: expected an http:// or https:// URL, got {url!r}")
    key = environ.get(ENV_API_KEY, "").strip()
    if not key:
        raise click.ClickException(
            f"{ENV_API_KEY} is not set (create a key with `stylequeue keys create NAME`)"
        )
    return StylequeueClient(url, key)


def _make_client(ctx: click.Context) -> StylequeueClient:
    config = ctx.find_object(ClientConfig)
    return config.make_client() if config is not None else client_from_env(os.environ)


def _fail(exc: StylequeueClientError | OSError) -> click.ClickException:
    if isinstance(exc, OSError):
        return click.ClickException(f"{exc.filename or 'file'}: {exc.strerror or exc}")
    if isinstance(exc, TransportError):
        return click.ClickException(f"cannot reach the server ({ENV_URL}?): {exc}")
    return click.ClickException(str(exc))


def _upload_fail(
    exc: StylequeueClientError | OSError, content: Path, styles: tuple[Path, ...]
) -> click.ClickException:
    """Like _fail, and a refused image names the local file it came from."""
    if not isinstance(exc, APIError) or not isinstance(field := exc.details.get("field"), str):
        return _fail(exc)
    path: Path | None = None
    if field == "content":
        path = content
    elif index := re.fullmatch(r"style\[(\d+)\]", field):
        path = styles[int(index[1])] if int(index[1]) < len(styles) else None
    if path is None:
        return _fail(exc)
    problem = describe_image_problem(field, path, exc.message)
    return click.ClickException(f"{problem} ({exc.code}, HTTP {exc.status})")


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


class _ProgressLine:
    """Draws a job's progress on stderr: redrawn in place on a terminal, a line per change elsewhere."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._drawn = False

    def __call__(self, job: Job) -> None:
        line = format_progress(job)
        if self._tty:
            click.echo("\r\x1b[K" + line, err=True, nl=False)
        else:
            click.echo(line, err=True)
        self._drawn = True

    def close(self) -> None:
        if self._tty and self._drawn:
            click.echo("", err=True)


@click.command("submit", epilog=f"{SUBMIT_EXIT_HELP}\n\n{ENVIRONMENT_HELP}")
@click.argument("content", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument(
    "styles", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--param",
    "-p",
    "param_items",
    multiple=True,
    metavar="NAME=VALUE",
    help="A job parameter (repeatable; `stylequeue params` lists them); VALUE is JSON "
    "when it parses, else a string.",
)
@click.option(
    "--wait", "wait_", is_flag=True, help="Show progress until the job ends, then save the result."
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --wait: where to save the PNG (default: <job id>.png).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="With --wait: give up waiting after this long (the job goes on).",
)
@click.option("--idempotency-key", help="Submitting again with the same key returns the first job.")
@click.option(
    "--cancel-after",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Cancel the job (deadline_exceeded) if it has not finished this long after the submit.",
)
@click.option(
    "--no-cache",
    is_flag=True,
    help="Compute the job even when it is an exact repeat of an earlier succeeded one "
    "(by default such a repeat is succeeded at once with a copy of that job's result).",
)
@click.option(
    "--webhook",
    metavar="URL",
    help="POST the job's JSON, signed with the key's webhook secret, to this http(s) URL.",
)
@click.option(
    "--webhook-events",
    metavar="EVENTS",
    help="With --webhook: comma-separated, of start, progress, completed (default: completed).",
)
@click.option(
    "--priority",
    type=click.IntRange(-10, 10),
    help="-10..10 (default 0): orders your own queued jobs, higher first.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@click.pass_context
def submit_cmd(
    ctx: click.Context,
    content: Path,
    styles: tuple[Path, ...],
    param_items: tuple[str, ...],
    wait_: bool,
    output: Path | None,
    timeout: float | None,
    idempotency_key: str | None,
    cancel_after: float | None,
    no_cache: bool,
    webhook: str | None,
    webhook_events: str | None,
    priority: int | None,
    as_json: bool,
) -> None:
    """Submit CONTENT styled after STYLE...; print the job id, or with --wait the saved file.

    What the server finds the inputs may do badly (an elongated or small
    content, a small style, transparency) is printed on stderr, one
    `warning: ...` line each; the job runs all the same.
    """
    if not wait_ and (output is not None or timeout is not None):
        raise click.UsageError("-o/--output and --timeout need --wait")
    params = parse_params(param_items)
    try:
        with _make_client(ctx) as client:
            job = client.submit(
                content,
                styles,
                params or None,
                idempotency_key=idempotency_key,
                cancel_after=cancel_after,
                cache=not no_cache,
                on_retry=_say_retry,
                webhook=webhook,
                webhook_events=webhook_events,
                priority=priority,
            )
            for warning in job.warnings:
                click.echo(warning_line(warning.message), err=True)
            if not wait_:
                _echo_json(job.to_json()) if as_json else click.echo(job.id)
                return
            click.echo(f"submitted job {job.id}", err=True)
            job = _wait_with_progress(client, job.id, timeout)
            if job.status is not JobStatus.SUCCEEDED:
                if as_json:
                    _echo_json(job.to_json())
                reason = f": {job.error.message} ({job.error.code})" if job.error else ""
                raise JobNotSucceeded(f"job {job.id} {job.status.value}{reason}")
            saved = client.download(job.id, output or Path(f"{job.id}.png"))
    except (StylequeueClientError, OSError) as exc:
        raise _upload_fail(exc, content, styles) from exc
    _echo_json({**job.to_json(), "output": str(saved)}) if as_json else click.echo(saved)


def _say_retry(error: RateLimitedError, seconds: float) -> None:
    click.echo(f"{error.message} ({error.code}); retrying in {seconds:g} s", err=True)


def _wait_with_progress(client: StylequeueClient, job_id: str, timeout: float | None) -> Job:
    bar = _ProgressLine()
    try:
        return client.wait(job_id, timeout=timeout, on_progress=bar)
    except KeyboardInterrupt:
        raise WaitInterrupted(job_id) from None
    finally:
        bar.close()


@click.command("status", epilog=ENVIRONMENT_HELP)
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@click.pass_context
def status_cmd(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show one job: status, progress, times, error."""
    try:
        with _make_client(ctx) as client:
            job = client.get(job_id)
    except (StylequeueClientError, OSError) as exc:
        raise _fail(exc) from exc
    _echo_json(job.to_json()) if as_json else click.echo(describe_job(job))


@click.command("list", epilog=ENVIRONMENT_HELP)
@click.option(
    "--status",
    "status",
    type=click.Choice([s.value for s in JobStatus]),
    help="Only jobs in this status.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=DEFAULT_LIST_LIMIT,
    show_default=True,
    help="Show at most this many jobs, newest first.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of jobs.")
@click.pass_context
def list_cmd(ctx: click.Context, status: str | None, limit: int, as_json: bool) -> None:
    """List your jobs, newest first."""
    try:
        with _make_client(ctx) as client:
            pages = client.iter_jobs(status=status, page_size=min(limit, LIST_PAGE_SIZE))
            jobs = list(itertools.islice(pages, limit))
    except (StylequeueClientError, OSError) as exc:
        raise _fail(exc) from exc
    if as_json:
        _echo_json([job.to_json() for job in jobs])
    elif jobs:
        click.echo(job_table(jobs))
    else:
        click.echo("no jobs", err=True)


@click.command("cancel", epilog=f"{CANCEL_EXIT_HELP}\n\n{ENVIRONMENT_HELP}")
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@click.pass_context
def cancel_cmd(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Cancel a queued or running job.

    A queued job is canceled at once. A running job is asked to stop: its
    worker sees the request within about a second (its heartbeat) and stops
    after the iteration it is on; `stylequeue status ID` then shows canceled.
    A job that has already succeeded or failed stays as it is.
    """
    try:
        with _make_client(ctx) as client:
            job = client.cancel(job_id)
    except (StylequeueClientError, OSError) as exc:
        raise _fail(exc) from exc
    if as_json:
        _echo_json(job.to_json())
    nothing_to_cancel = job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)
    if nothing_to_cancel:
        raise NothingToCancel(describe_cancel(job))
    if not as_json:
        click.echo(describe_cancel(job))


@click.command("result", epilog=ENVIRONMENT_HELP)
@click.argument("job_id", metavar="ID")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to save the PNG.",
)
@click.pass_context
def result_cmd(ctx: click.Context, job_id: str, output: Path) -> None:
    """Save the result PNG of a succeeded job."""
    try:
        with _make_client(ctx) as client:
            saved = client.download(job_id, output)
    except (StylequeueClientError, OSError) as exc:
        raise _fail(exc) from exc
    click.echo(saved)


def delivery_table(deliveries: list[WebhookDelivery]) -> str:
    """One line per webhook delivery: event, state, attempts, last status code, last error."""
    rows = [("EVENT", "STATE", "ATTEMPTS", "STATUS", "ERROR")]
    rows += [
        (
            delivery.event,
            delivery.state,
            str(delivery.attempts),
            "-" if delivery.status_code is None else str(delivery.status_code),
            delivery.error or "-",
        )
        for delivery in deliveries
    ]
    return text_table(rows)


@click.command("webhooks", epilog=ENVIRONMENT_HELP)
@click.argument("job_id", metavar="ID")
@click.option(
    "--json", "as_json", is_flag=True, help="Print a JSON array of deliveries, with their logs."
)
@click.pass_context
def webhooks_cmd(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """List a job's webhook deliveries, oldest first.

    One line each: the event (start, progress, completed), the state (pending,
    delivered, or failed: given up), the attempts made, and the last attempt's
    status code and error (`-`: none). --json adds each delivery's id (its
    webhook-id header), URL, times and every attempt.
    """
    try:
        with _make_client(ctx) as client:
            deliveries = client.webhooks(job_id)
    except (StylequeueClientError, OSError) as exc:
        raise _fail(exc) from exc
    if as_json:
        _echo_json([dataclasses.asdict(delivery) for delivery in deliveries])
    elif deliveries:
        click.echo(delivery_table(deliveries))
    else:
        click.echo("no webhook deliveries", err=True)


def register(group: click.Group) -> None:
    """Add the client commands to the ``stylequeue`` group."""
    for command in (submit_cmd, status_cmd, list_cmd, cancel_cmd, result_cmd, webhooks_cmd):
        group.add_command(command)
