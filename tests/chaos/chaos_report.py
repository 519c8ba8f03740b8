"""What the chaos test concludes from what the HTTP API showed it (no database access).

Per job the test gathers a ``JobSeen``: its final client JSON, its admin timeline
(``GET /v1/admin/jobs/{id}``: events oldest first, each with kind, attempt and
worker), the digests of the result downloaded when the job was first seen to
succeed and again at the end, what ``/result`` answered for a canceled job, and
every change of status the polls saw after the job had finished. ``chaos_report``
turns them into the report's counts, with a reason for each job it counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

FINISHED = frozenset({"succeeded", "failed", "canceled"})
# Events that are not written by an attempt's own worker: the API, the reconciler, an
# admin, or a worker's main process about its dead pool process.
NOT_BY_THE_ATTEMPT = frozenset(
    {
        "created",
        "requeued",
        "enqueue_failed",
        "cancel_requested",
        "retried",
        "files_deleted",
        "worker_lost",
    }
)
# An attempt's writes: a file (checkpoint, result) or a change of the job's row.
WRITES = frozenset({"checkpoint", "resumed", "released", "succeeded", "failed", "canceled"})
# Events that say a checkpoint at ``data.iteration`` was in storage.
CHECKPOINTED = frozenset({"checkpoint", "released", "resumed"})
# Events that say an attempt computed (so it started from its resume point or from 0).
COMPUTED = frozenset({"checkpoint", "released", "succeeded"})


@dataclass
class JobSeen:
    """Everything the test saw of one accepted job, through the API."""

    job_id: str
    canceled_by_us: bool = False
    status: str | None = None  # the last status a poll saw
    final: dict[str, Any] | None = None  # GET /v1/jobs/{id} at the end
    events: list[dict[str, Any]] = field(default_factory=list)  # the admin timeline
    first_result: str | None = None  # sha256 of /result when first seen succeeded
    final_result: str | None = None  # sha256 of /result at the end
    result_problem: str | None = None  # a succeeded job's /result that was no PNG
    # sha256 of /preview when first seen succeeded and at the end; "none" for a 404
    first_preview: str | None = None
    final_preview: str | None = None
    canceled_result_status: int | None = None  # /result of a canceled job
    status_changes_after_finish: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ChaosReport:
    seed: int
    submitted: int
    completed: int  # succeeded, or canceled at the test's request
    lost: int  # accepted, not finished by the deadline
    run_twice: int  # jobs that ran on two attempts at once
    stale_writes: int  # jobs that got a file or event from an attempt past its lease
    failed: int
    canceled: int
    claims: int  # attempts in all
    taken_over: int  # jobs claimed more than once
    resumed: int  # attempts that resumed from a checkpoint
    problems: dict[str, list[str]]  # job id -> the reasons it was counted

    def line(self) -> str:
        return (
            f"CHAOS REPORT seed={self.seed}: submitted={self.submitted} "
            f"completed={self.completed} lost={self.lost} "
            f"run_concurrently_twice={self.run_twice} stale_writes={self.stale_writes} "
            f"(failed={self.failed} canceled={self.canceled} claims={self.claims} "
            f"taken_over={self.taken_over} resumed={self.resumed})"
        )

    def details(self) -> str:
        return "\n".join(
            f"  job {job_id}: " + "; ".join(reasons) for job_id, reasons in self.problems.items()
        )


def timeline_findings(events: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(reasons the job ran twice at once, reasons it got stale writes) from its timeline.

    Two attempts overlapped when an event of attempt N by its own worker comes after
    attempt N+1's claim, or when the job succeeded twice. Such a late event that is
    a write (a checkpoint, a resume, a release, an end) is a stale write: attempt
    N+1's claim means attempt N had lost its lease. So is a resume from before a
    checkpoint that an earlier attempt had recorded (the checkpoint went back).
    """
    twice: list[str] = []
    stale: list[str] = []
    claims = [(i, e) for i, e in enumerate(events) if e["kind"] == "claimed"]
    successes = [e for e in events if e["kind"] == "succeeded"]
    if len(successes) > 1:
        twice.append(
            "succeeded twice (attempts " + ", ".join(str(e["attempt"]) for e in successes) + ")"
        )
    for (_, before), (after_index, after) in zip(claims, claims[1:], strict=False):
        late = [
            e
            for e in events[after_index + 1 :]
            if e["attempt"] == before["attempt"] and e["kind"] not in NOT_BY_THE_ATTEMPT
        ]
        if late:
            kinds = ", ".join(_describe(e) for e in late)
            twice.append(
                f"attempt {before['attempt']} ({before['worker']}) wrote {kinds} after attempt "
                f"{after['attempt']} ({after['worker']}) claimed the job at {after['at']}"
            )
            writes = [e for e in late if e["kind"] in WRITES]
            if writes:
                stale.append(
                    f"attempt {before['attempt']} wrote "
                    + ", ".join(_describe(e) for e in writes)
                    + f" after losing its lease to attempt {after['attempt']}"
                )
    for after_index, after in claims[1:]:
        known = [
            int(e.get("data", {}).get("iteration", 0))
            for e in events[:after_index]
            if e["kind"] in CHECKPOINTED
        ]
        if not known:
            continue
        mine = [e for e in events[after_index + 1 :] if e["attempt"] == after["attempt"]]
        resumed = [e for e in mine if e["kind"] == "resumed"]
        if resumed:
            start = int(resumed[0].get("data", {}).get("iteration", 0))
        elif any(e["kind"] in COMPUTED for e in mine):
            start = 0
        else:
            continue  # it stopped before it read a checkpoint: nothing to compare
        if start < max(known):
            stale.append(
                f"attempt {after['attempt']} resumed from iteration {start}, though a "
                f"checkpoint at iteration {max(known)} was recorded before its claim "
                "(a checkpoint went back)"
            )
    return twice, stale


def _describe(event: dict[str, Any]) -> str:
    iteration = event.get("data", {}).get("iteration")
    at = f" at iteration {iteration}" if iteration is not None else ""
    return f"{event['kind']}{at} ({event['at']})"


def chaos_report(seed: int, jobs: Iterable[JobSeen]) -> ChaosReport:
    seen = list(jobs)
    problems: dict[str, list[str]] = {}
    lost = twice_count = stale_count = completed = failed = canceled = 0
    claims = taken_over = resumed = 0
    for job in seen:
        job_claims = sum(e["kind"] == "claimed" for e in job.events)
        claims += job_claims
        taken_over += job_claims > 1
        resumed += sum(e["kind"] == "resumed" for e in job.events)
        status = (job.final or {}).get("status", job.status)
        reasons: list[str] = []
        if status not in FINISHED:
            lost += 1
            reasons.append(f"lost: still {status} at the deadline")
        elif status == "succeeded" or (status == "canceled" and job.canceled_by_us):
            completed += 1
        if status == "failed":
            failed += 1
            error = (job.final or {}).get("error") or {}
            reasons.append(f"failed: {error.get('code')}: {error.get('message')}")
        if status == "canceled":
            canceled += 1
            if not job.canceled_by_us:
                reasons.append("canceled, though nobody asked")
        twice, stale = timeline_findings(job.events)
        if status == "succeeded":
            if job.result_problem is not None:
                stale.append(f"result: {job.result_problem}")
            elif job.first_result != job.final_result:
                stale.append(
                    f"the result changed after the job succeeded "
                    f"(sha256 {job.first_result} then {job.final_result})"
                )
            if job.first_preview != job.final_preview:
                stale.append(
                    f"the preview changed after the job succeeded "
                    f"(sha256 {job.first_preview} then {job.final_preview})"
                )
        if status == "canceled" and job.canceled_result_status not in (404, 409):
            stale.append(f"canceled, yet /result answered {job.canceled_result_status}")
        for earlier, later in job.status_changes_after_finish:
            stale.append(f"finished as {earlier}, later seen {later}")
        twice_count += bool(twice)
        stale_count += bool(stale)
        reasons += [f"ran twice: {r}" for r in twice] + [f"stale write: {r}" for r in stale]
        if reasons:
            problems[job.job_id] = reasons
    return ChaosReport(
        seed=seed,
        submitted=len(seen),
        completed=completed,
        lost=lost,
        run_twice=twice_count,
        stale_writes=stale_count,
        failed=failed,
        canceled=canceled,
        claims=claims,
        taken_over=taken_over,
        resumed=resumed,
        problems=problems,
    )
