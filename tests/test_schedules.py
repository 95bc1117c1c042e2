"""Schedules (``@flow.cron``, ``@flow.every``): the ticks (DST days in Europe/Paris), the
missed-tick policies, mistakes caught at decoration, and the runs in Redis: once per tick
across flows, retried with the same id, paused, stopped when no worker declares them, shown
by ``redisflow stats``. The multi-process run is in ``test_chaos_schedules.py``."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest

from redisflow import ConfigError, Flow, Message
from redisflow.cli.render import render_text
from redisflow.features.schedules import LATE_MS, MAX_CATCH_UP, Schedule
from redisflow.ops.stats import collect
from redisflow.testing.cluster import RedisCluster
from tests.support.flows import eventually, make_flow
from tests.test_cli import ready_pids, run_workers

PARIS = ZoneInfo("Europe/Paris")


def ms(when: datetime) -> int:
    return round(when.timestamp() * 1000)


def paris(ticks: list[int]) -> list[str]:
    """Ticks as Paris wall times with their UTC offset (``02:30+02``)."""
    shown = []
    for tick in ticks:
        local = datetime.fromtimestamp(tick / 1000, PARIS)
        offset = local.utcoffset() or timedelta()
        shown.append(f"{local:%d %H:%M}+{offset.seconds // 3600:02d}")
    return shown


def ticks(schedule: Schedule, start: datetime, n: int) -> list[int]:
    found, at = [], ms(start)
    for _ in range(n):
        at = schedule.after(at)
        found.append(at)
    return found


# -- ticks ------------------------------------------------------------------------------


def test_every_ticks_on_multiples_of_its_period() -> None:
    """Real time: multiples of the period since the epoch, whatever the zone's clock does."""
    every = Schedule.every("e", 0.3)
    assert every.after(1_000) == 1_200
    assert every.after(1_200) == 1_500
    assert Schedule.every("e", timedelta(hours=1)).after(
        ms(datetime(2026, 3, 29, 0, 30, tzinfo=UTC))
    ) == ms(datetime(2026, 3, 29, 1, 0, tzinfo=UTC))
    hourly = Schedule.every("e", 3600)
    spring = ticks(hourly, datetime(2026, 3, 29, 0, 30, tzinfo=PARIS), 3)
    assert paris(spring) == ["29 01:00+01", "29 03:00+02", "29 04:00+02"], "an hour apart"
    fall = ticks(hourly, datetime(2026, 10, 25, 1, 30, tzinfo=PARIS), 3)
    assert paris(fall) == ["25 02:00+02", "25 02:00+01", "25 03:00+01"], "an hour apart"


def test_cron_on_the_day_the_clocks_go_forward() -> None:
    """Paris, 29 March 2026: 02:00 -> 03:00. A tick whose wall time falls in the gap runs at
    03:00 (the first instant after it), once even when several fall there; nothing else
    moves, and no day loses its tick."""
    start = datetime(2026, 3, 28, 12, 0, tzinfo=PARIS)
    daily = Schedule.from_cron("d", "30 2 * * *", "Europe/Paris")
    assert paris(ticks(daily, start, 3)) == ["29 03:00+02", "30 02:30+02", "31 02:30+02"]
    half_hourly = Schedule.from_cron("h", "*/30 * * * *", "Europe/Paris")
    night = ticks(half_hourly, datetime(2026, 3, 29, 1, 0, tzinfo=PARIS), 3)
    assert paris(night) == ["29 01:30+01", "29 03:00+02", "29 03:30+02"]
    at_three = Schedule.from_cron("t", "0 3 * * *", "Europe/Paris")
    assert paris(ticks(at_three, start, 2)) == ["29 03:00+02", "30 03:00+02"]


def test_cron_on_the_day_the_clocks_go_back() -> None:
    """Paris, 25 October 2026: 03:00 -> 02:00, so 02:00-02:59 happens twice. Each wall-clock
    tick runs once, at its first occurrence (+02); the repeated hour has no ticks."""
    start = datetime(2026, 10, 24, 12, 0, tzinfo=PARIS)
    daily = Schedule.from_cron("d", "30 2 * * *", "Europe/Paris")
    assert paris(ticks(daily, start, 3)) == ["25 02:30+02", "26 02:30+01", "27 02:30+01"]
    half_hourly = Schedule.from_cron("h", "*/30 * * * *", "Europe/Paris")
    night = ticks(half_hourly, datetime(2026, 10, 25, 1, 0, tzinfo=PARIS), 5)
    assert paris(night) == [
        "25 01:30+02",
        "25 02:00+02",
        "25 02:30+02",
        "25 03:00+01",
        "25 03:30+01",
    ]
    # Claimed in the repeated hour (after 02:30+02 ran), the next tick is 03:00+01.
    repeated = ms(datetime(2026, 10, 25, 2, 10, tzinfo=PARIS).replace(fold=1))
    assert paris([half_hourly.after(repeated)]) == ["25 03:00+01"]


def test_cron_in_utc_with_seconds() -> None:
    """Without ``tz``, UTC; a sixth field (first) counts seconds, so a test need not wait
    for minutes."""
    every_two = Schedule.from_cron("s", "*/2 * * * * *")
    start = datetime(2026, 1, 1, 0, 0, 1, 500_000, tzinfo=UTC)
    assert ticks(every_two, start, 3) == [ms(start) + 500 + i * 2000 for i in range(3)]
    assert str(every_two) == "*/2 * * * * * (UTC)"
    assert str(Schedule.every("e", 30)) == "every 30 s"


# -- missed ticks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda p: Schedule.every("e", 1, p),
        lambda p: Schedule.from_cron("c", "* * * * * *", None, p),
    ],
    ids=["every", "cron"],
)
def test_missed_tick_policies(make: Any) -> None:
    """Ticks 1 s apart, due from t=10 s, claimed at t=15.2 s (six due): ``skip`` runs the
    latest (on time: superseded by none), ``once`` one run standing for the six, ``all``
    each, the latest 100 at most."""
    base = 1_800_000_000_000  # a whole second
    due, now = base + 10_000, base + 15_200
    skip, once, every = make("skip"), make("once"), make("all")
    plan = skip.plan(due, now)
    assert (plan.runs, plan.missed, plan.next, plan.last) == (
        [(base + 15_000, 0)],
        5,
        base + 16_000,
        base + 15_000,
    )
    plan = once.plan(due, now)
    assert (plan.runs, plan.missed) == ([(base + 15_000, 5)], 5)
    plan = every.plan(due, now)
    assert (plan.runs, plan.missed) == ([(base + t * 1000, 0) for t in range(10, 16)], 0)
    plan = every.plan(due, due + 200_000)  # 201 due
    assert [t for t, _ in plan.runs] == [due + t * 1000 for t in range(101, 201)]
    assert plan.missed == 201 - MAX_CATCH_UP, "all: the latest 100"


def test_a_tick_over_a_minute_late_is_missed() -> None:
    """Every two minutes, claimed 70 s after the tick (no worker ran): ``skip`` runs none,
    ``once`` and ``all`` run it."""
    due = 1_800_000_000_000 // 120_000 * 120_000
    for policy, runs in (("skip", []), ("once", [(due, 0)]), ("all", [(due, 0)])):
        plan = Schedule.every("e", 120, policy).plan(due, due + LATE_MS + 10_000)
        assert (plan.runs, plan.missed) == (runs, 1 - len(runs)), policy
        assert plan.next == due + 120_000
    assert Schedule.every("e", 120).plan(due, due + LATE_MS).runs == [(due, 0)], "a minute: on time"


def test_a_long_outage_of_a_frequent_cron_schedule_takes_the_latest() -> None:
    """Every second, claimed after a day: the runs are the latest ticks (counting stops at
    20,000 ticks, then the tail is read backwards)."""
    schedule = Schedule.from_cron("c", "* * * * * *", None, "all")
    base = 1_800_000_000_000
    plan = schedule.plan(base, base + 86_400_000)
    assert [t for t, _ in plan.runs] == [base + 86_400_000 - i * 1000 for i in range(99, -1, -1)]
    assert plan.missed >= 20_000 - MAX_CATCH_UP
    assert plan.next == base + 86_401_000


# -- mistakes at decoration ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("decorate", "message"),
    [
        (
            lambda f: f.cron("61 * * * *"),
            "invalid cron expression '61 \\* \\* \\* \\*': Bad minute",
        ),
        (lambda f: f.cron("* * *"), "Wrong number of fields"),
        (lambda f: f.cron("* * */20 * 1L"), "has no tick in the next 50 years"),
        (lambda f: f.cron("* * * * *", tz="Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
        (lambda f: f.every(0), "every\\(\\) takes a period of at least 0.001 s"),
        (lambda f: f.every(-1), "at least 0.001 s"),
        (lambda f: f.every(timedelta(0)), "at least 0.001 s"),
        (lambda f: f.every(float("nan")), "at least 0.001 s"),
        (lambda f: f.every(1, missed="never"), "missed must be one of skip, once, all"),
        (lambda f: f.every(1, concurrency=0), "concurrency must be an int >= 1"),
        (lambda f: f.every(1, partitions=2), "unknown option for a schedule handler: partitions"),
        (lambda f: f.every(1, name="a}b"), "does not close a hash tag"),
    ],
)
def test_mistakes_are_config_errors_naming_the_function(decorate: Any, message: str) -> None:
    flow = Flow("redis://localhost")

    async def nightly(msg: Message[Any]) -> None: ...

    with pytest.raises(ConfigError, match=f"handler 'test_mistakes.*nightly': .*{message}"):
        decorate(flow)(nightly)


def test_what_a_schedule_cannot_take() -> None:
    """No payload (a parameter that is not a Message or a resource), no parentheses left
    out, no name shared with another source of the flow."""
    flow = Flow("redis://localhost")

    async def job(data) -> None: ...  # type: ignore[no-untyped-def]

    with pytest.raises(ConfigError, match="parameter 'data' is neither a Message \\(a schedule"):
        flow.every(1)(job)
    with pytest.raises(ConfigError, match=r"write @flow\.every\(seconds\)"):
        flow.every(job)  # type: ignore[arg-type]
    flow.on_queue("jobs")(lambda x: None)
    with pytest.raises(ConfigError, match="queue 'jobs' has the same name"):
        flow.every(1, name="jobs")(lambda: None)
    flow.every(1, name="beat")(lambda: None)
    with pytest.raises(ConfigError, match="schedule 'beat' already has a handler"):
        flow.cron("* * * * *", name="beat")(lambda: None)


# -- in Redis -------------------------------------------------------------------------------

anyio_test = pytest.mark.anyio


def scheduled(flow: Flow, runs: list[Message[Any]], **options: Any) -> None:
    @flow.every(0.2, name="beat", **options)
    async def beat(msg: Message[Any]) -> None:
        runs.append(msg)


@anyio_test
async def test_two_flows_run_each_tick_once(url: str, ns: str) -> None:
    """Two flows (two workers) declare the schedule: each tick runs once, its ``msg.id``
    and ``scheduled_for`` name the tick, ticks 0.2 s apart; the state counts them."""
    runs: list[Message[Any]] = []
    a, b = make_flow(url, ns), make_flow(url, ns)
    scheduled(a, runs)
    scheduled(b, runs)
    async with a, b:
        await eventually(lambda: len(runs) >= 8, within=10, what="8 ticks")
        state = await a.send("HGETALL", a.keys("beat").schedule)
    ids = [m.id for m in runs]
    assert len(ids) == len(set(ids)), Counter(ids).most_common(3)
    times = sorted(ms(m.scheduled_for) for m in runs)  # type: ignore[arg-type]
    assert all(t % 200 == 0 for t in times)
    assert times == list(range(times[0], times[-1] + 1, 200)), "no tick missing"
    assert all(m.id.endswith(f"-{ms(m.scheduled_for)}") for m in runs)  # type: ignore[arg-type]
    assert {m.source.kind for m in runs} == {"schedule"} and runs[0].source.name == "beat"
    fields = dict(zip(state[::2], state[1::2], strict=True))
    assert int(fields[b"fired"]) >= len(runs) and fields[b"spec"] == b"every 200 ms"


@anyio_test
async def test_a_failed_run_is_retried_with_the_same_id(url: str, ns: str) -> None:
    """A tick is a message: a failure is retried (same id, same tick, attempt 2), and the
    outcome of the last run is kept for ``stats``."""
    flow = make_flow(url, ns)
    runs: list[tuple[str, Any, int]] = []

    @flow.every(0.5, name="flaky", max_attempts=2, retry_delay=0.05, retry_max_delay=0.05)
    async def flaky(msg: Message[Any]) -> None:
        runs.append((msg.id, msg.scheduled_for, msg.attempt))
        if msg.attempt == 1:
            raise ValueError("first attempt fails")

    def twice() -> list[tuple[Any, int]]:
        """The runs (tick, attempt) of the first id that ran twice. The next tick may run
        before that retry: a retry waits in the delayed set, which a worker's housekeeping
        looks at every ``tick`` (0.5 s), as often as this schedule ticks."""
        by_id: dict[str, list[tuple[Any, int]]] = {}
        for mid, when, attempt in runs:
            by_id.setdefault(mid, []).append((when, attempt))
        return next((both for both in by_id.values() if len(both) >= 2), [])

    async with flow:
        await eventually(lambda: twice(), within=10, what="a retry")
        await eventually(
            lambda: _field(flow, "flaky", b"outcome"), within=5, what="an outcome recorded"
        )
    (first_tick, first_attempt), (second_tick, second_attempt) = twice()[:2]
    assert first_tick == second_tick and (first_attempt, second_attempt) == (1, 2), runs


async def _field(flow: Flow, name: str, field: bytes) -> bytes | None:
    value = await flow.send("HGET", flow.keys(name).schedule, field)
    return value if isinstance(value, bytes) else None


@anyio_test
@pytest.mark.parametrize("policy", ["skip", "once", "all"])
async def test_ticks_missed_while_no_worker_runs(policy: str, url: str, ns: str) -> None:
    """No worker for about a second (5 ticks of 0.2 s): on restart ``skip`` runs the latest
    tick alone, ``once`` one run standing for all of them (``missed`` in its payload),
    ``all`` each of them; the state counts the ticks that got no run of their own."""
    runs: list[Message[Any]] = []
    flow = make_flow(url, ns)
    scheduled(flow, runs, missed=policy)
    async with flow:
        await eventually(lambda: len(runs) >= 2, within=10, what="2 ticks")
    stopped = ms(max(m.scheduled_for for m in runs))  # type: ignore[type-var,arg-type]
    before = len(runs)
    await anyio.sleep(1.2)
    async with flow:
        await eventually(lambda: len(runs) >= before + 1, within=10, what="after restart")
        state = await flow.send("HMGET", flow.keys("beat").schedule, "missed", "last")
    first_claim = [m for m in runs[before:] if m.enqueued_at == runs[before].enqueued_at]
    gap = [ms(m.scheduled_for) for m in first_claim]  # type: ignore[arg-type]
    last = int(state[1])
    due = (gap[-1] - stopped) // 200  # the ticks after the last run, up to the first claim
    assert due >= 5, (stopped, gap)
    if policy == "all":
        assert gap == list(range(stopped + 200, gap[-1] + 1, 200)), "each missed tick"
        assert int(state[0]) == 0
    else:
        assert len(gap) == 1, gap
        assert int(state[0]) >= due - 1
        payload = first_claim[0].payload
        assert payload == {"scheduled_for": gap[0], "missed": due - 1 if policy == "once" else 0}
    assert last >= gap[-1]


@anyio_test
async def test_a_paused_schedule_claims_nothing(url: str, ns: str) -> None:
    """Paused by name, a schedule runs no tick; on resume the missed policy applies (skip:
    the ticks of the pause are counted missed)."""
    runs: list[Message[Any]] = []
    flow = make_flow(url, ns)
    scheduled(flow, runs)
    async with flow:
        await eventually(lambda: len(runs) >= 2, within=10, what="2 ticks")
        await flow.pause("beat")
        at_pause = len(runs)
        await anyio.sleep(1.0)
        assert len(runs) <= at_pause + 1, "a run claimed before the pause may finish"
        during = len(runs)
        assert [p.name for p in await flow.paused()] == ["beat"]
        await flow.resume("beat")
        await eventually(lambda: len(runs) >= during + 2, within=10, what="ticks again")
        missed = int(await flow.send("HGET", flow.keys("beat").schedule, "missed"))
    assert missed >= 3


@anyio_test
async def test_a_schedule_no_worker_declares_stops(url: str, ns: str) -> None:
    """The decorator removed: flows that do not declare the schedule claim none of its
    ticks (its state stays as the last worker left it)."""
    runs: list[Message[Any]] = []
    old = make_flow(url, ns)
    scheduled(old, runs)
    async with old:
        await eventually(lambda: len(runs) >= 2, within=10, what="2 ticks")
    state_key = old.keys("beat").schedule
    new = make_flow(url, ns)

    @new.on_queue("jobs")
    async def jobs(job: Any) -> None: ...

    async with new:
        left = await new.send("HGETALL", state_key)
        await anyio.sleep(1.0)
        assert await new.send("HGETALL", state_key) == left
        assert await new.send("LLEN", new.keys("beat").ticks) == 0


@anyio_test
async def test_stats_dead_letters_and_the_command_line(url: str, ns: str) -> None:
    """``stats`` rows of a schedule (its spec, next and last tick, the last run's outcome,
    runs and missed counts, paused); a run that keeps failing is dead-lettered under the
    schedule's name and replayed into its internal queue."""
    flow = make_flow(url, ns)
    runs: list[Message[Any]] = []

    @flow.cron("* * * * * *", name="nightly", max_attempts=1)
    async def nightly(msg: Message[Any]) -> None:
        runs.append(msg)
        raise ValueError("always")

    async with flow:
        await eventually(lambda: len(runs) >= 1, within=10, what="a run")
        dead = flow.dlq("nightly")
        await eventually(dead.count, within=5, what="a dead letter")
        await flow.pause("nightly")
        snapshot = await collect(flow.client)
        [row] = snapshot.rows
        assert (row.kind, row.source, row.paused) == ("schedule", "nightly", True)
        assert row.schedule is not None and row.schedule.spec == "cron * * * * * * UTC"
        assert row.schedule.fired >= 1 and row.schedule.outcome == "failed (attempt 1)"
        assert row.schedule.error == "ValueError: always"
        assert row.schedule.next is not None and row.schedule.last is not None

        async def counted() -> bool:  # workers report their counters every 2 s
            rows = (await collect(flow.client)).rows
            return bool(rows[0].counters and rows[0].counters["dead"] >= 1)

        await eventually(counted, within=10, what="the dead run counted")
        letter = (await dead.list(limit=1))[0]
        assert letter.message_id == runs[0].id and letter.handler.endswith("nightly")
        text = render_text(snapshot, url)
        assert "nightly (paused)" in text and "cron * * * * * * UTC" in text, text
        assert await dead.replay(limit=1) == 1
        assert await flow.send("LLEN", flow.keys("nightly").ticks) == 1, "back in its queue"


@anyio_test
async def test_a_schedule_on_a_cluster(redisflow_cluster: RedisCluster, ns: str) -> None:
    """On a cluster the claim script runs on the node of the schedule's slot; two flows, each
    tick once."""
    url = redisflow_cluster.seed_url
    runs: list[Message[Any]] = []
    a, b = make_flow(url, ns), make_flow(url, ns)
    scheduled(a, runs)
    scheduled(b, runs)
    async with a, b:
        await eventually(lambda: len(runs) >= 5, within=10, what="5 ticks")
    ids = [m.id for m in runs]
    assert len(ids) == len(set(ids))


def test_cron_without_cronsim_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """``@flow.cron`` needs the ``cron`` extra; ``@flow.every`` does not."""
    import sys

    monkeypatch.setitem(sys.modules, "cronsim", None)  # import cronsim -> ImportError
    flow = Flow("redis://localhost")
    with pytest.raises(
        ConfigError,
        match=r"<lambda>': @flow.cron needs the cronsim package: pip install cronsim",
    ):
        flow.cron("0 3 * * *", name="nightly")(lambda: None)
    flow.every(1, name="beat")(lambda: None)


@anyio_test
async def test_a_changed_period_takes_effect_at_once(url: str, ns: str, caplog: Any) -> None:
    """A new deployment with another period: the stored spec differs, so the next tick is
    computed again from the new one (logged once)."""
    runs: list[Message[Any]] = []
    old = make_flow(url, ns)
    scheduled(old, runs)  # every 0.2 s
    async with old:
        await eventually(lambda: len(runs) >= 2, within=10, what="2 ticks")
    new = make_flow(url, ns)
    later: list[Message[Any]] = []

    @new.every(0.5, name="beat")
    async def beat(msg: Message[Any]) -> None:
        later.append(msg)

    async with new:
        await eventually(lambda: len(later) >= 2, within=10, what="2 ticks of the new period")
        spec = await new.send("HGET", new.keys("beat").schedule, "spec")
    assert spec == b"every 500 ms"
    assert all(ms(m.scheduled_for) % 500 == 0 for m in later)  # type: ignore[arg-type]
    assert "the schedule changed (every 200 ms -> every 500 ms)" in caplog.text


SCHEDULED_APP = """
import os

from redisflow import Flow, Message

flow = Flow({url!r}, prefix={ns!r})


@flow.every(0.2, name="beat")
async def beat(msg: Message) -> None:
    stamp = int(msg.scheduled_for.timestamp() * 1000)
    await flow.send("RPUSH", {runs!r}, f"{{msg.id}} {{stamp}} {{os.getpid()}}")
"""


@anyio_test
async def test_run_with_workers_runs_each_tick_once(url: str, ns: str, tmp_path: Path) -> None:
    """``redisflow run --workers 2``: two processes declare the schedule, each tick runs
    once in one of them, and none is missing while they run."""
    runs = f"{ns}:runs"
    (tmp_path / "scheduled_app.py").write_text(SCHEDULED_APP.format(url=url, ns=ns, runs=runs))
    log = tmp_path / "workers.log"
    proc = run_workers(tmp_path, "scheduled_app:flow", log)
    flow = make_flow(url, ns)
    try:
        await eventually(lambda: len(ready_pids(log)) == 2, 30, "2 workers ready")
        await eventually(lambda: flow.send("LLEN", runs), within=10, what="a first run")
        first = await flow.send("LLEN", runs)
        await anyio.sleep(3)  # ~15 ticks, both processes live
        lines = [line.decode().split() for line in await flow.send("LRANGE", runs, 0, -1)]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        await flow.aclose()
    ids = [mid for mid, _, _ in lines]
    assert len(ids) == len(set(ids)), Counter(ids).most_common(3)
    stamps = sorted(int(stamp) for _, stamp, _ in lines[first:])
    assert len(stamps) >= 8, lines
    assert stamps == list(range(stamps[0], stamps[-1] + 1, 200)), "no tick missing or twice"
    assert {int(pid) for _, _, pid in lines} <= set(ready_pids(log)), (lines, log.read_text())
