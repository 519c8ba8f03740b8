"""The chaos report's reading of what the API showed: it must catch each kind of finding."""

from __future__ import annotations

from typing import Any

from chaos_report import JobSeen, chaos_report, timeline_findings


def event(kind: str, attempt: int = 0, worker: str | None = None, **data: Any) -> dict[str, Any]:
    return {"kind": kind, "attempt": attempt, "worker": worker, "at": f"t-{kind}", "data": data}


def taken_over(*tail: dict[str, Any]) -> list[dict[str, Any]]:
    """Attempt 1 on w/1 checkpointed at 10 and was cut off; attempt 2 on w/2 took over."""
    return [
        event("created"),
        event("claimed", 1, "w/1"),
        event("checkpoint", 1, "w/1", iteration=10),
        event("requeued"),
        event("claimed", 2, "w/2"),
        *tail,
    ]


def succeeded_job(events: list[dict[str, Any]], **fields: Any) -> JobSeen:
    values: dict[str, Any] = {"first_result": "a", "final_result": "a"}
    return JobSeen("job", final={"status": "succeeded"}, events=events, **(values | fields))


def test_a_clean_takeover_is_no_finding() -> None:
    events = taken_over(
        event("resumed", 2, "w/2", iteration=10),
        event("checkpoint", 2, "w/2", iteration=20),
        event("cancel_requested"),  # by the client, attempt 0: not the first attempt's
        event("succeeded", 2, "w/2"),
    )
    assert timeline_findings(events) == ([], [])
    report = chaos_report(7, [succeeded_job(events)])
    assert (report.submitted, report.completed, report.lost) == (1, 1, 0)
    assert (report.run_twice, report.stale_writes) == (0, 0)
    assert (report.claims, report.taken_over, report.resumed) == (2, 1, 1)
    assert report.line().startswith("CHAOS REPORT seed=7: submitted=1 completed=1 lost=0 ")


def test_an_event_of_the_old_attempt_after_the_new_claim_is_a_run_twice_and_a_stale_write() -> None:
    events = taken_over(
        event("resumed", 2, "w/2", iteration=10),
        event("checkpoint", 1, "w/1", iteration=14),  # the paused worker, continued
        event("succeeded", 2, "w/2"),
    )
    twice, stale = timeline_findings(events)
    assert len(twice) == 1 and "attempt 1 (w/1) wrote checkpoint at iteration 14" in twice[0]
    assert len(stale) == 1 and "after losing its lease to attempt 2" in stale[0]
    report = chaos_report(1, [succeeded_job(events)])
    assert (report.run_twice, report.stale_writes) == (1, 1)
    assert "job" in report.problems


def test_two_successes_are_a_run_twice() -> None:
    events = [
        event("claimed", 1, "w/1"),
        event("succeeded", 1, "w/1"),
        event("succeeded", 1, "w/1"),
    ]
    twice, _ = timeline_findings(events)
    assert twice == ["succeeded twice (attempts 1, 1)"]


def test_a_resume_from_before_a_recorded_checkpoint_is_a_stale_write() -> None:
    went_back = taken_over(event("resumed", 2, "w/2", iteration=4), event("succeeded", 2, "w/2"))
    from_scratch = taken_over(event("checkpoint", 2, "w/2", iteration=3))
    for events in (went_back, from_scratch):
        twice, stale = timeline_findings(events)
        assert twice == [] and len(stale) == 1 and "a checkpoint went back" in stale[0]
    # Killed before it read the checkpoint: nothing to compare.
    assert timeline_findings(taken_over(event("worker_lost", 2, "w/2"))) == ([], [])


def test_results_cancels_and_statuses_seen_over_http() -> None:
    changed = succeeded_job([event("claimed", 1, "w/1")], final_result="b")
    unreadable = succeeded_job([], result_problem="/result answered 404")
    canceled_with_result = JobSeen(
        "c", canceled_by_us=True, final={"status": "canceled"}, canceled_result_status=200
    )
    reopened = succeeded_job([], status_changes_after_finish=[("succeeded", "running")])
    late_preview = succeeded_job([], first_preview="none", final_preview="c")
    report = chaos_report(3, [changed, unreadable, canceled_with_result, reopened, late_preview])
    assert report.stale_writes == 5
    assert report.run_twice == 0


def test_lost_failed_and_canceled_jobs_are_counted_apart() -> None:
    lost = JobSeen("l", final={"status": "running"})
    failed = JobSeen("f", final={"status": "failed", "error": {"code": "internal_error"}})
    asked = JobSeen(
        "a", canceled_by_us=True, final={"status": "canceled"}, canceled_result_status=409
    )
    unasked = JobSeen("u", final={"status": "canceled"}, canceled_result_status=409)
    report = chaos_report(5, [lost, failed, asked, unasked])
    assert (report.submitted, report.completed, report.lost) == (4, 1, 1)
    assert (report.failed, report.canceled, report.stale_writes) == (1, 2, 0)
    assert set(report.problems) == {"l", "f", "u"}
