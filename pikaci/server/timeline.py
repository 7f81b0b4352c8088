"""The timeline of one run, drawn as an inline SVG for the run page of the web UI.

Rows are the run's prepare timings, then each job's execute span followed by its Incus phases,
all placed on one time axis whose origin is the run's creation (or an earlier start, should a
clock disagree). Records come from disk and may be partial or damaged: a timestamp that cannot
be read turns its row into an untimed one instead of failing the page.

The SVG scales to its container (`width="100%"`, no pixel size) and each row's label sits on its
own line above the bar, so the chart stays readable on a 360 px phone screen.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import List, Optional, Tuple

from pikaci.model import RUN_RUNNING, RunRecord
from pikaci.timestamps import parse_timestamp, utc_now

KIND_PREPARE = "prepare"
KIND_EXECUTE = "execute"
KIND_PHASE = "phase"
# a prepare timing records no outcome, only that the step happened
PREPARE_DONE = "done"

NOTE_RUNNING = "running"
NOTE_NOT_TIMED = "not timed"
NOTE_NO_END = "no end time"

NO_TIMINGS = "no timings recorded"

# nice tick steps in seconds; consecutive steps differ by at most 2.5x, which is what keeps the
# tick count within 4-8 once the axis spans at least MIN_SPAN_S
_TICK_STEPS: Tuple[float, ...] = (
    0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800,
    3600, 7200, 10800, 21600, 43200, 86400,
)  # fmt: skip
_MAX_TICK_INTERVALS = 7
MIN_SPAN_S = 1.0

# geometry, in viewBox units; the width is small so that text stays legible once the whole
# drawing is scaled down to a phone's width
_WIDTH = 400.0
_PAD = 8.0
_PLOT_LEFT = _PAD
_PLOT_RIGHT = _WIDTH - _PAD
_AXIS_Y = 16.0
_ROWS_TOP = 22.0
_LABEL_BASELINE = 12.0  # from the row's top
_BAR_TOP = 16.0
_BAR_HEIGHT = 10.0
_ROW_HEIGHT = 32.0
_NOTE_LINE = 12.0  # extra height when a note fits neither beside nor before its bar
_PHASE_INDENT = 10.0
_NOTE_CHAR_WIDTH = 5.6  # a generous average for the 10-unit note font
_GAP = 4.0

_STYLE = (
    "text{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}"
    ".label{font-size:12px;fill:#1f2328}"
    ".row-phase .label{fill:#424a53}"
    ".duration{fill:#656d76;font-size:10px}"
    ".note{font-size:10px;font-style:italic;fill:#656d76}"
    ".tick{font-size:9px;fill:#656d76}"
    ".axis{stroke:#8c959f;stroke-width:1}"
    ".grid{stroke:#d8dee4;stroke-width:0.5}"
    ".bar-prepare{fill:#8250df}"
    ".bar-execute{fill:#0969da}"
    ".bar-phase{fill:#80b6f0}"
    ".status-failed .bar{fill:#cf222e}"
    ".status-failed .bar-phase{fill:#f0a0a6}"
    ".status-skipped .bar{fill:#afb8c1}"
    ".bar-running{fill:url(#pikaci-timeline-running)}"
    ".empty{font-size:12px;fill:#656d76}"
)
_DEFS = (
    '<defs><pattern id="pikaci-timeline-running" width="6" height="6"'
    ' patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
    '<rect width="6" height="6" fill="#d4a72c"/><rect width="3" height="6" fill="#9a6700"/>'
    "</pattern></defs>"
)

# characters XML 1.0 does not allow at all, even escaped
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_CLASS_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class TimelineRow:
    key: str  # "prepare:<node_id>", "job:<job_id>", "phase:<job_id>:<phase>"
    label: str
    kind: str  # prepare | execute | phase
    status: str  # the job's status; PREPARE_DONE (or running) for prepare rows
    start_s: Optional[float]  # seconds since the timeline's origin; None when not timed
    end_s: Optional[float]
    note: str = ""

    @property
    def timed(self) -> bool:
        return self.start_s is not None and self.end_s is not None

    @property
    def duration_s(self) -> Optional[float]:
        if self.start_s is None or self.end_s is None:
            return None
        return self.end_s - self.start_s


# -- rows -----------------------------------------------------------------------------------


def parse_moment(value: object) -> Optional[datetime]:
    """A record's timestamp, or None when it is missing or unparsable (never raises)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_timestamp(value)
    except (ValueError, OverflowError):
        # out-of-range fields (month 13, hour 25) raise from datetime itself
        return None


@dataclass
class _Span:
    key: str
    label: str
    kind: str
    status: str
    start: Optional[datetime]
    end: Optional[datetime]
    note: str


def _span(
    key: str,
    label: str,
    kind: str,
    status: str,
    started_at: object,
    finished_at: object,
    duration_ms: object,
    live: bool,
    now: datetime,
    reused_from: Optional[str] = None,
) -> _Span:
    start = parse_moment(started_at)
    end = parse_moment(finished_at)
    note = f"reused from {reused_from}" if reused_from else ""
    if start is None:
        return _Span(key, label, kind, status, None, None, note or NOTE_NOT_TIMED)
    if end is None and isinstance(duration_ms, int) and not isinstance(duration_ms, bool):
        try:
            end = start + timedelta(milliseconds=max(0, duration_ms))
        except OverflowError:
            end = None
    if end is None and live:
        end, note = now, note or NOTE_RUNNING
    if end is None:
        end, note = start, note or NOTE_NO_END
    # a clock that stepped back must not draw a bar of negative width
    return _Span(key, label, kind, status, start, max(start, end), note)


def _spans(run: RunRecord, now: datetime) -> List[_Span]:
    run_live = run.status == RUN_RUNNING and not run.finished_at
    spans: List[_Span] = []
    for timing in run.prepare_timings:
        live = run_live and not timing.finished_at
        status = RUN_RUNNING if live and parse_moment(timing.started_at) else PREPARE_DONE
        spans.append(
            _span(
                f"prepare:{timing.node_id}",
                timing.node_id,
                KIND_PREPARE,
                status,
                timing.started_at,
                timing.finished_at,
                timing.duration_ms,
                live,
                now,
            )
        )
    for job in run.jobs:
        job_live = job.status == RUN_RUNNING and not job.finished_at
        spans.append(
            _span(
                f"job:{job.id}",
                job.id,
                KIND_EXECUTE,
                job.status,
                job.started_at,
                job.finished_at,
                None,
                job_live,
                now,
                reused_from=job.reused_from_run,
            )
        )
        execution = job.remote_linux_vm_execution
        for phase in execution.phases if execution is not None else []:
            spans.append(
                _span(
                    f"phase:{job.id}:{phase.phase}",
                    phase.phase,
                    KIND_PHASE,
                    job.status,
                    phase.started_at,
                    phase.finished_at,
                    phase.duration_ms,
                    job_live,
                    now,
                )
            )
    return spans


def _aware(moment: Optional[datetime]) -> datetime:
    if moment is None:
        return utc_now()
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _origin(run: RunRecord, spans: List[_Span]) -> Optional[datetime]:
    candidates = [span.start for span in spans if span.start is not None]
    created = parse_moment(run.created_at)
    if created is not None:
        candidates.append(created)
    return min(candidates) if candidates else None


def _offset(moment: Optional[datetime], origin: Optional[datetime]) -> Optional[float]:
    if moment is None or origin is None:
        return None
    return (moment - origin).total_seconds()


def _timeline(run: RunRecord, now: datetime) -> Tuple[List[TimelineRow], Optional[float]]:
    """The rows, and the run's end as an offset when it has finished."""
    spans = _spans(run, now)
    origin = _origin(run, spans)
    rows = [
        TimelineRow(
            key=span.key,
            label=span.label,
            kind=span.kind,
            status=span.status,
            start_s=_offset(span.start, origin),
            end_s=_offset(span.end, origin),
            note=span.note,
        )
        for span in spans
    ]
    return rows, _offset(parse_moment(run.finished_at), origin)


def timeline_rows(run: RunRecord, now: Optional[datetime] = None) -> List[TimelineRow]:
    """The run's rows in display order, offsets in seconds from the earliest known moment."""
    return _timeline(run, _aware(now))[0]


def _extent(rows: List[TimelineRow], run_end: Optional[float]) -> float:
    """How many seconds the axis must cover: every bar, and the run itself once finished."""
    ends = [row.end_s for row in rows if row.end_s is not None]
    if run_end is not None:
        ends.append(run_end)
    return max([0.0, *ends])


# -- formatting -----------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """`0.42 s`, `12.3 s`, `2m 05s`, `1h 02m`: precise for short steps, coarse for long ones."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0.0, seconds)
    # the thresholds sit where rounding would carry into the next, coarser form
    if seconds < 9.995:
        return f"{seconds:.2f} s"
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    minutes = round(seconds / 60)
    return f"{minutes // 60}h {minutes % 60:02d}m"


def format_tick(seconds: float) -> str:
    """An axis label: `0s`, `0.5s`, `30s`, `1m`, `1m30s`, `2h`, `1h30m`."""
    if seconds != int(seconds):
        return f"{round(seconds, 1):g}s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{value}{unit}" for value, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if value
    ]
    return "".join(parts) or "0s"


def tick_step(span_s: float) -> float:
    """The smallest nice step that covers `span_s` in at most seven intervals."""
    span_s = max(span_s, MIN_SPAN_S)
    for step in _TICK_STEPS:
        if _intervals(span_s, step) <= _MAX_TICK_INTERVALS:
            return step
    # beyond the table (weeks): whole days
    days = math.ceil(span_s / 86400 / _MAX_TICK_INTERVALS)
    return float(days * 86400)


def ticks(span_s: float) -> List[Tuple[float, str]]:
    """The axis ticks, from 0 up to the first tick at or past `span_s` (4 to 8 of them)."""
    step = tick_step(span_s)
    count = _intervals(max(span_s, MIN_SPAN_S), step)
    return [(index * step, format_tick(round(index * step, 6))) for index in range(count + 1)]


def _intervals(span_s: float, step: float) -> int:
    # the tolerance keeps float noise (0.6 / 0.2 = 2.9999...) from adding a tick
    return max(1, math.ceil(span_s / step - 1e-9))


# -- SVG ------------------------------------------------------------------------------------


def _esc(text: str) -> str:
    return html.escape(_XML_INVALID.sub("\ufffd", text), quote=True)


def _class_token(text: str) -> str:
    return _CLASS_UNSAFE.sub("-", text) or "unknown"


def _num(value: float) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _svg_open(height: float, aria_label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline"'
        f' viewBox="0 0 {_num(_WIDTH)} {_num(height)}" width="100%"'
        f' preserveAspectRatio="xMinYMin meet" role="img" aria-label="{_esc(aria_label)}">'
    )


def _note_placement(
    note: str, bar: Optional[Tuple[float, float]], top: float
) -> Tuple[str, float, float, bool]:
    """Where a note goes: (text-anchor, x, baseline y, needs its own line)."""
    bar_baseline = top + _BAR_TOP + _BAR_HEIGHT - 1
    if bar is None:
        return "start", _PLOT_LEFT, bar_baseline, False
    left, right = bar
    width = len(note) * _NOTE_CHAR_WIDTH
    if right + _GAP + width <= _PLOT_RIGHT:
        return "start", right + _GAP, bar_baseline, False
    if left - _GAP - width >= _PLOT_LEFT:
        return "end", left - _GAP, bar_baseline, False
    # a long note next to a wide bar: below the bar rather than over it
    return "start", _PLOT_LEFT, bar_baseline + _NOTE_LINE, True


def _render_row(row: TimelineRow, top: float, scale: float) -> Tuple[str, float]:
    """One row's `<g>` and its height."""
    classes = f"row row-{_class_token(row.kind)} status-{_class_token(row.status)}"
    parts = [f'<g class="{classes}" data-row="{_esc(row.key)}">']
    indent = _PHASE_INDENT if row.kind == KIND_PHASE else 0.0
    duration = row.duration_s
    shown = f" {format_duration(duration)}" if duration is not None else ""
    parts.append(
        f'<text class="label" x="{_num(_PLOT_LEFT + indent)}" y="{_num(top + _LABEL_BASELINE)}">'
        f'{_esc(row.label)}<tspan class="duration">{_esc(shown)}</tspan></text>'
    )
    bar: Optional[Tuple[float, float]] = None
    if row.start_s is not None and duration is not None:
        # at least one unit wide, so that a step of a few milliseconds is still visible
        width = max(1.0, duration * scale)
        left = min(_PLOT_LEFT + row.start_s * scale, _PLOT_RIGHT - width)
        bar = (left, left + width)
        bar_classes = f"bar bar-{_class_token(row.kind)}"
        if row.note == NOTE_RUNNING:
            bar_classes += " bar-running"
        title = f"{row.label} · {format_duration(duration)}"
        if row.note:
            title += f" · {row.note}"
        parts.append(
            f'<rect class="{bar_classes}" x="{_num(left)}" y="{_num(top + _BAR_TOP)}"'
            f' width="{_num(width)}" height="{_num(_BAR_HEIGHT)}" rx="1.5">'
            f"<title>{_esc(title)}</title></rect>"
        )
    height = _ROW_HEIGHT
    if row.note:
        anchor, x, y, own_line = _note_placement(row.note, bar, top)
        if own_line:
            height += _NOTE_LINE
        parts.append(
            f'<text class="note" x="{_num(x)}" y="{_num(y)}" text-anchor="{anchor}">'
            f"{_esc(row.note)}</text>"
        )
    parts.append("</g>")
    return "".join(parts), height


def render_timeline(run: RunRecord, now: Optional[datetime] = None) -> str:
    """The run's timeline as one `<svg>` element, ready to be inlined into an HTML page."""
    rows, run_end = _timeline(run, _aware(now))
    if not rows:
        return (
            _svg_open(40.0, f"Timeline of run {run.run_id}: {NO_TIMINGS}")
            + f"<style>{_STYLE}</style>"
            + f'<text class="empty" x="{_num(_PLOT_LEFT)}" y="24">{_esc(NO_TIMINGS)}</text></svg>'
        )
    extent = _extent(rows, run_end)
    axis = ticks(extent)
    axis_end = axis[-1][0]
    scale = (_PLOT_RIGHT - _PLOT_LEFT) / axis_end

    body: List[str] = []
    top = _ROWS_TOP
    for row in rows:
        markup, height = _render_row(row, top, scale)
        body.append(markup)
        top += height
    height = top + _PAD / 2

    grid: List[str] = ['<g class="ticks">']
    for index, (at, label) in enumerate(axis):
        x = _PLOT_LEFT + at * scale
        # the outer labels are pulled inwards so they are not clipped at the edges
        anchor = "start" if index == 0 else "end" if index == len(axis) - 1 else "middle"
        grid.append(
            f'<line class="grid" x1="{_num(x)}" y1="{_num(_AXIS_Y)}" x2="{_num(x)}"'
            f' y2="{_num(height - _PAD / 2)}"/>'
            f'<text class="tick" x="{_num(x)}" y="{_num(_AXIS_Y - 4)}"'
            f' text-anchor="{anchor}">{_esc(label)}</text>'
        )
    grid.append(
        f'<line class="axis" x1="{_num(_PLOT_LEFT)}" y1="{_num(_AXIS_Y)}"'
        f' x2="{_num(_PLOT_RIGHT)}" y2="{_num(_AXIS_Y)}"/></g>'
    )

    timed = sum(1 for row in rows if row.timed)
    aria = (
        f"Timeline of run {run.run_id}: {len(rows)} rows, {timed} timed,"
        f" spanning {format_duration(extent)}"
    )
    return "".join(
        [
            _svg_open(height, aria),
            f"<style>{_STYLE}</style>",
            _DEFS,
            *grid,
            *body,
            "</svg>",
        ]
    )
