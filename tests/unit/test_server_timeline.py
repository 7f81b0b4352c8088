"""The run timeline of the web UI: rows, offsets, the SVG drawing and duration formatting."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from typing import Any, Dict, List

import pytest

from pikaci.model import (
    RUN_FAILED,
    RUN_PASSED,
    RUN_RUNNING,
    JobRecord,
    PhaseTiming,
    PrepareTiming,
    RemoteLinuxVmExecution,
    RunRecord,
)
from pikaci.server.timeline import (
    NO_TIMINGS,
    PREPARE_DONE,
    TimelineRow,
    format_duration,
    render_timeline,
    tick_step,
    ticks,
    timeline_rows,
)

SVG = "{http://www.w3.org/2000/svg}"
RUN_ID = "20260301T100000Z-0123abcd"
PREVIOUS = "20260228T090000Z-89abcdef"


def ts(seconds: float) -> str:
    """A timestamp `seconds` after 10:00:00 on the run's day, nine fractional digits."""
    whole = int(seconds)
    nanos = round((seconds - whole) * 1e9)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    return f"2026-03-01T{10 + hours:02d}:{minutes:02d}:{secs:02d}.{nanos:09d}Z"


def phase(name: str, start: float, end: float) -> PhaseTiming:
    return PhaseTiming(
        phase=name,
        started_at=ts(start),
        finished_at=ts(end),
        duration_ms=int((end - start) * 1000),
    )


def sample_run() -> RunRecord:
    """Two snapshot prepares, a host job and an Incus job with three phases."""
    return RunRecord(
        run_id=RUN_ID,
        status=RUN_FAILED,
        created_at=ts(2),
        finished_at=ts(95),
        prepare_timings=[
            PrepareTiming(
                node_id="snapshot-pikaci",
                started_at=ts(3.5),
                finished_at=ts(5.75),
                duration_ms=2250,
            ),
            PrepareTiming(
                node_id="build:demo:deps",
                started_at=ts(6),
                finished_at=ts(7.23),
                duration_ms=1230,
            ),
        ],
        jobs=[
            JobRecord(
                id="lint",
                status=RUN_PASSED,
                started_at=ts(8),
                finished_at=ts(20.5),
            ),
            JobRecord(
                id="incus-tests",
                status=RUN_FAILED,
                started_at=ts(10),
                finished_at=ts(95),
                remote_linux_vm_execution=RemoteLinuxVmExecution(
                    phases=[
                        phase("prepare_directories", 10, 10.25),
                        phase("prepare_runtime", 10.25, 40),
                        phase("wait_for_completion", 40, 94),
                    ]
                ),
            ),
        ],
    )


def by_key(rows: List[TimelineRow]) -> Dict[str, TimelineRow]:
    return {row.key: row for row in rows}


def parse_svg(text: str) -> ET.Element:
    root = ET.fromstring(text)
    assert root.tag == f"{SVG}svg"
    return root


def svg_rows(root: ET.Element) -> List[ET.Element]:
    return [g for g in root.iter(f"{SVG}g") if "data-row" in g.attrib]


def row_group(root: ET.Element, key: str) -> ET.Element:
    (group,) = [g for g in svg_rows(root) if g.get("data-row") == key]
    return group


def texts(element: ET.Element) -> List[str]:
    return ["".join(text.itertext()) for text in element.iter(f"{SVG}text")]


# -- rows -----------------------------------------------------------------------------------


def test_rows_come_in_record_order_with_phases_after_their_job() -> None:
    rows = timeline_rows(sample_run())
    assert [row.key for row in rows] == [
        "prepare:snapshot-pikaci",
        "prepare:build:demo:deps",
        "job:lint",
        "job:incus-tests",
        "phase:incus-tests:prepare_directories",
        "phase:incus-tests:prepare_runtime",
        "phase:incus-tests:wait_for_completion",
    ]
    assert [row.kind for row in rows] == ["prepare"] * 2 + ["execute"] * 2 + ["phase"] * 3
    assert [row.status for row in rows] == [PREPARE_DONE] * 2 + [RUN_PASSED] + [RUN_FAILED] * 4
    assert [row.label for row in rows][2:5] == ["lint", "incus-tests", "prepare_directories"]
    assert all(row.note == "" for row in rows)


def test_offsets_are_seconds_since_the_run_was_created() -> None:
    rows = by_key(timeline_rows(sample_run()))
    assert rows["prepare:snapshot-pikaci"].start_s == 1.5
    assert rows["prepare:snapshot-pikaci"].end_s == 3.75
    assert rows["prepare:build:demo:deps"].start_s == 4.0
    assert rows["prepare:build:demo:deps"].end_s == pytest.approx(5.23)
    assert (rows["job:lint"].start_s, rows["job:lint"].end_s) == (6.0, 18.5)
    assert (rows["job:incus-tests"].start_s, rows["job:incus-tests"].end_s) == (8.0, 93.0)
    runtime = rows["phase:incus-tests:prepare_runtime"]
    assert (runtime.start_s, runtime.end_s) == (8.25, 38.0)


def test_origin_is_an_earlier_start_when_the_clock_disagrees() -> None:
    run = sample_run()
    run.jobs[0].started_at = ts(0.5)  # before created_at (2 s)
    rows = by_key(timeline_rows(run))
    assert rows["job:lint"].start_s == 0.0
    assert rows["prepare:snapshot-pikaci"].start_s == 3.0


def test_running_job_ends_now() -> None:
    run = sample_run()
    run.status, run.finished_at = RUN_RUNNING, None
    job = run.jobs[1]
    job.status, job.finished_at = RUN_RUNNING, None
    job.remote_linux_vm_execution = RemoteLinuxVmExecution(
        phases=[phase("prepare_directories", 10, 10.25)]
    )
    now = datetime(2026, 3, 1, 10, 2, 2, tzinfo=timezone.utc)
    rows = by_key(timeline_rows(run, now=now))
    running = rows["job:incus-tests"]
    assert (running.start_s, running.end_s, running.note) == (8.0, 120.0, "running")
    assert running.status == RUN_RUNNING
    # a completed phase of a running job keeps its own end
    done = rows["phase:incus-tests:prepare_directories"]
    assert (done.end_s, done.note) == (8.25, "")
    # a naive `now` is taken as UTC
    naive = by_key(timeline_rows(run, now=now.replace(tzinfo=None)))
    assert naive["job:incus-tests"].end_s == 120.0

    svg = parse_svg(render_timeline(run, now=now))
    group = row_group(svg, "job:incus-tests")
    (rect,) = group.iter(f"{SVG}rect")
    assert "bar-running" in (rect.get("class") or "").split()
    assert "running" in texts(group)


def test_running_job_without_a_start_is_not_timed() -> None:
    run = RunRecord(
        run_id=RUN_ID,
        created_at=ts(0),
        jobs=[JobRecord(id="queued", status=RUN_RUNNING)],
    )
    (row,) = timeline_rows(run, now=datetime(2026, 3, 1, 10, 0, 30, tzinfo=timezone.utc))
    assert (row.start_s, row.end_s, row.note) == (None, None, "not timed")


def test_reused_and_untimed_jobs_have_no_bar() -> None:
    run = sample_run()
    run.jobs.append(JobRecord(id="cached", status=RUN_PASSED, reused_from_run=PREVIOUS))
    run.jobs.append(JobRecord(id="skipped-lane", status="skipped"))
    rows = by_key(timeline_rows(run))
    cached, skipped = rows["job:cached"], rows["job:skipped-lane"]
    assert (cached.start_s, cached.end_s, cached.note) == (None, None, f"reused from {PREVIOUS}")
    assert (skipped.start_s, skipped.end_s, skipped.note) == (None, None, "not timed")

    svg = parse_svg(render_timeline(run))
    groups = {g.get("data-row"): g for g in svg_rows(svg)}
    for key in ("job:cached", "job:skipped-lane"):
        assert list(groups[key].iter(f"{SVG}rect")) == []
    assert f"reused from {PREVIOUS}" in texts(groups["job:cached"])
    assert "not timed" in texts(groups["job:skipped-lane"])


def test_reused_job_with_a_zero_length_timing_keeps_its_note() -> None:
    run = sample_run()
    run.jobs[0].reused_from_run = PREVIOUS
    run.jobs[0].finished_at = run.jobs[0].started_at
    row = by_key(timeline_rows(run))["job:lint"]
    assert (row.start_s, row.end_s, row.note) == (6.0, 6.0, f"reused from {PREVIOUS}")


def test_bad_timestamps_do_not_raise() -> None:
    run = sample_run()
    run.created_at = "yesterday"
    run.finished_at = "2026-13-01T00:00:00Z"  # month 13: the pattern matches, datetime refuses
    run.prepare_timings[0].started_at = "garbage"
    run.prepare_timings[1].finished_at = 17  # type: ignore[assignment]
    run.jobs[0].started_at = "2026-03-01T25:00:00Z"
    phases = run.jobs[1].remote_linux_vm_execution
    assert phases is not None
    phases.phases[0].started_at = None
    phases.phases[1].finished_at = ""
    phases.phases[1].duration_ms = None
    phases.phases[2].finished_at = None
    phases.phases[2].duration_ms = 10**20  # past datetime.max
    rows = by_key(timeline_rows(run))
    assert rows["prepare:snapshot-pikaci"].note == "not timed"
    assert rows["prepare:snapshot-pikaci"].start_s is None
    assert rows["job:lint"].note == "not timed"
    assert rows["phase:incus-tests:prepare_directories"].note == "not timed"
    # with created_at unreadable the origin is the earliest readable start: the second prepare
    deps = rows["prepare:build:demo:deps"]
    assert deps.start_s == 0.0
    assert deps.end_s == pytest.approx(1.23)  # from duration_ms, the end being unreadable
    runtime = rows["phase:incus-tests:prepare_runtime"]
    assert (runtime.start_s, runtime.end_s, runtime.note) == (4.25, 4.25, "no end time")
    waited = rows["phase:incus-tests:wait_for_completion"]
    assert (waited.start_s, waited.end_s, waited.note) == (34.0, 34.0, "no end time")
    parse_svg(render_timeline(run))


def test_nothing_readable_at_all() -> None:
    run = RunRecord(
        run_id=RUN_ID,
        created_at="not a time",
        jobs=[JobRecord(id="a", status=RUN_PASSED, started_at="x", finished_at="y")],
    )
    (row,) = timeline_rows(run)
    assert (row.start_s, row.end_s, row.note) == (None, None, "not timed")
    root = parse_svg(render_timeline(run))
    assert [g.get("data-row") for g in svg_rows(root)] == ["job:a"]


def test_end_before_start_is_clamped() -> None:
    run = sample_run()
    run.jobs[0].finished_at = ts(4)  # started at 8 s
    row = by_key(timeline_rows(run))["job:lint"]
    assert row.start_s == row.end_s == 6.0
    group = row_group(parse_svg(render_timeline(run)), "job:lint")
    (rect,) = group.iter(f"{SVG}rect")
    assert float(rect.get("width") or 0) >= 1.0


# -- SVG ------------------------------------------------------------------------------------


def test_svg_is_well_formed_with_one_group_per_row() -> None:
    run = sample_run()
    run.jobs.append(JobRecord(id="cached", status=RUN_PASSED, reused_from_run=PREVIOUS))
    rows = timeline_rows(run)
    text = render_timeline(run)
    root = parse_svg(text)
    assert root.get("width") == "100%"
    assert root.get("role") == "img"
    assert RUN_ID in (root.get("aria-label") or "")
    assert (root.get("viewBox") or "").startswith("0 0 ")
    assert root.find(f"{SVG}style") is not None

    groups = svg_rows(root)
    assert [g.get("data-row") for g in groups] == [row.key for row in rows]
    for row, group in zip(rows, groups):
        classes = (group.get("class") or "").split()
        assert {"row", f"row-{row.kind}", f"status-{row.status}"} <= set(classes)
        rects = list(group.iter(f"{SVG}rect"))
        assert len(rects) == (1 if row.start_s is not None else 0), row.key
        for rect in rects:
            assert f"bar-{row.kind}" in (rect.get("class") or "").split()
            assert float(rect.get("width") or 0) >= 1.0
        assert row.label in texts(group)[0]


def test_bar_titles_name_the_row_and_its_duration() -> None:
    root = parse_svg(render_timeline(sample_run()))
    titles = {
        g.get("data-row"): "".join(title.itertext())
        for g in svg_rows(root)
        for title in g.iter(f"{SVG}title")
    }
    assert titles["prepare:build:demo:deps"] == "build:demo:deps · 1.23 s"
    assert titles["job:incus-tests"] == "incus-tests · 1m 25s"
    assert titles["phase:incus-tests:prepare_directories"] == "prepare_directories · 0.25 s"


def test_failed_job_row_carries_status_failed() -> None:
    root = parse_svg(render_timeline(sample_run()))
    classes = {g.get("data-row"): (g.get("class") or "").split() for g in svg_rows(root)}
    assert "status-failed" in classes["job:incus-tests"]
    assert "status-failed" in classes["phase:incus-tests:prepare_runtime"]
    assert "status-passed" in classes["job:lint"]
    assert "status-failed" not in classes["job:lint"]


def test_labels_are_escaped() -> None:
    nasty = "lane<&>\"'x"
    run = sample_run()
    run.jobs[0].id = nasty
    run.jobs[0].reused_from_run = "<run>&"
    text = render_timeline(run)
    assert nasty not in text
    assert "lane&lt;&amp;&gt;&quot;" in text
    root = parse_svg(text)
    groups = svg_rows(root)
    assert groups[2].get("data-row") == f"job:{nasty}"
    assert texts(groups[2])[0].startswith(nasty)
    assert "reused from <run>&" in texts(groups[2])
    (title,) = groups[2].iter(f"{SVG}title")
    assert (title.text or "").startswith(f"{nasty} · ")


def test_control_characters_do_not_break_the_xml() -> None:
    run = sample_run()
    run.jobs[0].id = "bell\x07lane"
    parse_svg(render_timeline(run))


def test_a_run_without_rows_says_so() -> None:
    run = RunRecord(run_id=RUN_ID, created_at=ts(0))
    assert timeline_rows(run) == []
    root = parse_svg(render_timeline(run))
    assert svg_rows(root) == []
    assert texts(root) == [NO_TIMINGS]
    assert root.get("width") == "100%"


def tick_labels(root: ET.Element) -> List[str]:
    return [
        "".join(text.itertext())
        for text in root.iter(f"{SVG}text")
        if "tick" in (text.get("class") or "").split()
    ]


def test_ticks_for_a_95_second_run() -> None:
    labels = tick_labels(parse_svg(render_timeline(sample_run())))
    assert labels == ["0s", "15s", "30s", "45s", "1m", "1m15s", "1m30s", "1m45s"]


def test_ticks_for_a_two_hour_run() -> None:
    run = RunRecord(
        run_id=RUN_ID,
        status=RUN_PASSED,
        created_at="2026-03-01T10:00:00Z",
        finished_at="2026-03-01T12:00:00Z",
        jobs=[
            JobRecord(
                id="nightly",
                status=RUN_PASSED,
                started_at="2026-03-01T10:00:05.5Z",
                finished_at="2026-03-01T11:59:00Z",
            )
        ],
    )
    labels = tick_labels(parse_svg(render_timeline(run)))
    assert labels == ["0s", "30m", "1h", "1h30m", "2h"]


@pytest.mark.parametrize(
    ("span", "step", "first", "last"),
    [
        (0.0, 0.2, "0s", "1s"),
        (0.7, 0.2, "0s", "1s"),
        (3.0, 0.5, "0s", "3s"),
        (12.0, 2, "0s", "12s"),
        (60.0, 10, "0s", "1m"),
        (95.0, 15, "0s", "1m45s"),
        (600.0, 120, "0s", "10m"),
        (3600.0, 600, "0s", "1h"),
        (86400.0 * 3, 43200, "0s", "72h"),
    ],
)
def test_tick_steps_are_nice_and_few(span: float, step: float, first: str, last: str) -> None:
    assert tick_step(span) == step
    marks = ticks(span)
    assert 4 <= len(marks) <= 8
    assert (marks[0][1], marks[-1][1]) == (first, last)
    assert marks[-1][0] >= span


def test_tick_count_stays_in_range_everywhere() -> None:
    for tenths in range(0, 200_000, 7):
        span = tenths / 10
        assert 4 <= len(ticks(span)) <= 8, span
    for span in (0.6, 1.2, 2.4, 3.6, 42.0, 7 * 15.0, 7 * 15.0 + 1e-7, 7200.0 * 7):
        assert 4 <= len(ticks(span)) <= 8, span


# -- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.0, "0.00 s"),
        (0.42, "0.42 s"),
        (1.234, "1.23 s"),
        (9.994, "9.99 s"),
        (9.996, "10.0 s"),
        (12.34, "12.3 s"),
        (59.94, "59.9 s"),
        (59.96, "1m 00s"),
        (125.0, "2m 05s"),
        (3599.4, "59m 59s"),
        (3599.6, "1h 00m"),
        (3720.0, "1h 02m"),
        (90000.0, "25h 00m"),
        (-3.0, "0.00 s"),
        (float("nan"), "?"),
    ],
)
def test_format_duration(seconds: float, expected: str) -> None:
    assert format_duration(seconds) == expected


def test_records_read_from_json_draw_the_same() -> None:
    data: Dict[str, Any] = sample_run().to_dict()
    run = RunRecord.from_dict(data, "run")
    assert timeline_rows(run) == timeline_rows(sample_run())
    assert render_timeline(run) == render_timeline(sample_run())
