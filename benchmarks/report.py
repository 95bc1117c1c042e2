"""What a row of the suite is, and how its results are shown: the tables (results.md), the
raw runs (results.json) and the chart (results.png). With ``--baseline``, each redisflow row
has a twin that runs an older commit's ``redisflow/``: the tables show the ratio of their
medians and a verdict per workload."""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cluster

WORKLOADS = {
    "queue": "Queue drain: N pre-filled messages, msg/s",
    "stream": "Stream drain, consumer group + acks, msg/s",
    "priority": "Priority-queue drain, msg/s",
    "groups": "Fair groups: drain of N messages spread over G groups, msg/s",
    "starvation": "Fair groups: a new group's one message sent while one group holds a "
    "100,000-message backlog, enqueue -> handler, median of 5, ms",
    "pubsub": "Pub/Sub: received msg/s, publisher (pipelines of 100) in another process",
    "produce": "Produce: one awaited call per message, msg/s",
    "produce_concurrent": "Produce: 1,000 tasks awaiting one call per message, msg/s",
    "latency": "Latency, one message in flight: publish -> handler start, p50 (p99) ms",
    "request": "Request/reply: 100 concurrent callers, round trip p50 (p99) ms, requests/s",
    "memory": "Memory: peak RSS of a worker draining a backlog, MB",
    "start": "Start: process spawn -> first handled message of a pre-filled queue, s",
    "cluster": "Redis Cluster, 3 masters: partitioned queue and stream drains, N pre-filled "
    "messages, 1 or 2 consumer processes; msg/s and the Redis CPU of each master per message",
}
# Units where a smaller figure is the better one (the --baseline verdicts).
LOWER_IS_BETTER = {"ms", "s", "MB"}


@dataclass(frozen=True)
class Row:
    workload: str
    label: str
    framework: str
    case: str | None  # None: the framework has no such feature (``note`` says so)
    size: str = "n"  # which N: "n", "slow" or "job" (capped for slow consumers), "memory"
    note: str = ""
    # redisflow's target: (">=" or "<=", value); ("of", f): at least f times the redis-py row
    # of the same case; ("~", 0): a peak RSS no more than 10% + 5 MB above the same worker's
    # with an N-message backlog (bounded by prefetch, not by backlog)
    target: tuple[str, float] | None = None
    baseline: str = ""  # a --baseline twin: the full sha of the redisflow/ it imports
    of: str = ""  # a twin: the label of the row it is the twin of (same workload)
    partitions: int = 1  # cluster rows: the source's partitions
    processes: int = 1  # cluster rows: consumer processes draining it together
    replica: bool = False  # runs on a server with one replica attached (the WAIT rows)


@dataclass
class Outcome:
    row: Row
    n: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""


# -- tables ---------------------------------------------------------------------------------


def fmt(value: float, unit: str) -> str:
    if unit == "msg/s":
        return f"{value:,.0f}"
    if unit == "s":
        return f"{value:.3f}"
    return f"{value:,.2f}" if value < 10 else f"{value:,.1f}"


def describe(o: Outcome) -> tuple[str, str, str]:
    """(median, min-max, details) of an outcome's runs."""
    values = [r["value"] for r in o.runs]
    unit = o.runs[0]["unit"]
    median = fmt(statistics.median(values), unit)
    spread = f"{fmt(min(values), unit)} - {fmt(max(values), unit)}"
    details = []
    last = o.runs[-1]
    if "concurrency" in last:
        details.append(f"concurrency {last['concurrency']}")
    if "cpu_us" in last:
        details.append(f"{statistics.median(r['cpu_us'] for r in o.runs):.1f} us CPU/msg")
    if "spans" in last:
        details.append(f"{statistics.median(r['spans'] for r in o.runs):,.0f} spans exported")
    if "p99" in last:
        details.append(f"p99 {fmt(statistics.median(r['p99'] for r in o.runs), 'ms')} ms")
    if "rps" in last:
        details.append(f"{statistics.median(r['rps'] for r in o.runs):,.0f} requests/s")
    if "lost" in last:
        details.append(f"lost {', '.join(str(r['lost']) for r in o.runs)}")
        details.append(
            f"published at {statistics.median(r['published_rate'] for r in o.runs):,.0f}/s"
        )
    if "drained" in last:
        start = statistics.median(r["start_mb"] for r in o.runs)
        drained = statistics.median(r["drained"] for r in o.runs)
        details.append(f"{start:.0f} MB before draining; drained {drained:,.0f}")
    if "import_s" in last:
        imported = statistics.median(r["import_s"] for r in o.runs)
        main = statistics.median(r["main_s"] for r in o.runs)
        details.append(f"`import {last['imported']}` {imported:.3f} s; main() at {main:.3f} s")
    return median, spread, "; ".join(details)


# -- a --baseline twin against its row --------------------------------------------------------


def median_of(o: Outcome) -> float:
    return statistics.median(r["value"] for r in o.runs)


def twin_of(o: Outcome, outcomes: list[Outcome]) -> Outcome | None:
    """The current row a --baseline twin is compared with."""
    return next(
        (x for x in outcomes
         if x.row.workload == o.row.workload and x.row.label == o.row.of and not x.row.baseline),
        None,
    )  # fmt: skip


def versus(o: Outcome, outcomes: list[Outcome]) -> tuple[str, str]:
    """(current/baseline - 1 of the medians, e.g. "+3.1%"; the verdict) for a twin row:
    "within noise" when the min-max ranges of the runs overlap, else faster or slower."""
    current = twin_of(o, outcomes)
    if current is None or not current.runs or not o.runs:
        return "", "not compared: a run failed"
    unit = o.runs[0]["unit"]
    change = f"{median_of(current) / median_of(o) - 1:+.1%}"
    now = [r["value"] for r in current.runs]
    then = [r["value"] for r in o.runs]
    if min(now) <= max(then) and min(then) <= max(now):
        return change, "within noise"
    better = (median_of(current) < median_of(o)) == (unit in LOWER_IS_BETTER)
    words = ("smaller", "larger") if unit == "MB" else ("faster", "slower")
    word = words[0] if better else words[1]
    if len(now) < 2 or len(then) < 2:
        return change, f"{word}?"  # one run: no range, so no telling it from noise
    return change, word


def verdicts(rows: list[Outcome], outcomes: list[Outcome]) -> list[str]:
    """One line per workload: each twin's ratio and verdict."""
    twins = [o for o in rows if o.row.baseline]
    if not twins:
        return []
    parts = []
    for o in twins:
        change, said = versus(o, outcomes)
        parts.append(f"{o.row.of} {change or '-'} **{said}**")
    text = f"Current vs `{twins[0].row.baseline[:7]}`: " + "; ".join(parts) + "."
    if any(said.endswith("?") for _, said in (versus(o, outcomes) for o in twins)):
        text += " (`?`: one run each, no range to judge the noise by: use --repeat.)"
    return ["", text]


#: Whether the target column grades the rows: not for --smoke, whose small N and single run
#: say nothing about the targets (a smoke run only proves every workload still runs).
GRADED = True


def grade(on: bool) -> None:
    """Grade the rows against their targets (``on``) or leave the target column empty."""
    global GRADED
    GRADED = on


def verdict(o: Outcome, outcomes: list[Outcome]) -> str:
    if not GRADED or o.row.target is None or not o.runs:
        return ""
    op, goal = o.row.target
    value = statistics.median(r["value"] for r in o.runs)
    if op == "~":
        small = [
            x for x in outcomes
            if x.row.case == o.row.case and x.row.framework == o.row.framework and x.row.size == "n"
            and x.row.baseline == o.row.baseline
        ]  # fmt: skip
        if not small or not small[0].runs:
            return ""
        base = statistics.median(r["value"] for r in small[0].runs)
        met = value <= base * 1.1 + 5
        return f"{'met' if met else 'NOT met'} (vs {base:.1f} MB with {small[0].n:,})"
    if op == "of":
        bare = [
            x for x in outcomes
            if x.row.case == o.row.case and x.row.framework == "redis-py" and x.runs
        ]  # fmt: skip
        if not bare:
            return ""
        ratio = value / statistics.median(r["value"] for r in bare[0].runs)
        return f"{'met' if ratio >= goal else 'NOT met'} ({ratio:.0%} of redis-py, >= {goal:.0%})"
    met = value >= goal if op == ">=" else value <= goal
    return f"{'met' if met else 'NOT met'} ({op} {goal:,g})"


def line(o: Outcome, outcomes: list[Outcome], compare: bool) -> str:
    """One row of a table; ``compare``: with the current/baseline column."""
    ratio = ""
    if compare and o.row.baseline and o.runs:
        ratio = f"{versus(o, outcomes)[0]} | "
    elif compare:
        ratio = " | "
    if o.row.case is None:
        return f"| {o.row.label} | | - | | | {ratio}{o.row.note} |"
    if not o.runs:
        return f"| {o.row.label} | {o.n:,} | - | | | {ratio}failed: {o.error or 'not run'} |"
    median, spread, details = describe(o)
    if o.error:
        details += f"; failed after {len(o.runs)} runs: {o.error}"
    n = statistics.median(r["n"] for r in o.runs)
    return (
        f"| {o.row.label} | {n:,.0f} | {median} | {spread} | {verdict(o, outcomes)} "
        f"| {ratio}{details} |"
    )


def table(outcomes: list[Outcome]) -> str:
    lines: list[str] = []
    compare = any(o.row.baseline for o in outcomes)
    for workload, title in WORKLOADS.items():
        rows = [o for o in outcomes if o.row.workload == workload]
        if not rows:
            continue
        lines += ["", f"### {title}", ""]
        if workload == "cluster":
            lines += cluster_table(rows, outcomes)
            continue
        if compare:
            lines += [
                "| framework | N | median | min - max | target | current / baseline | notes |",
                "|---|--:|--:|--:|---|--:|---|",
            ]
        else:
            lines += [
                "| framework | N | median | min - max | target | notes |",
                "|---|--:|--:|--:|---|---|",
            ]
        lines += [line(o, outcomes, compare) for o in rows]
        lines += verdicts(rows, outcomes)
    return "\n".join(lines)


# -- chart ----------------------------------------------------------------------------------


def chart(outcomes: list[Outcome], info: dict[str, Any], path: Path) -> None:
    """One panel per workload: the median of each framework, whiskers at min and max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = [w for w in WORKLOADS if any(o.row.workload == w and o.runs for o in outcomes)]
    fig, axes = plt.subplots(len(workloads), 1, figsize=(10, 2.2 + 0.42 * len(outcomes)))
    axes = [axes] if len(workloads) == 1 else list(axes)
    for ax, workload in zip(axes, workloads, strict=True):
        rows = [o for o in outcomes if o.row.workload == workload and o.runs]
        values = [statistics.median(r["value"] for r in o.runs) for o in rows]
        low = [v - min(r["value"] for r in o.runs) for v, o in zip(values, rows, strict=True)]
        high = [max(r["value"] for r in o.runs) - v for v, o in zip(values, rows, strict=True)]
        colors = [color(o.row) for o in rows]
        y = range(len(rows))
        ax.barh(y, values, xerr=[low, high], color=colors, capsize=2)
        ax.set_yticks(list(y), [o.row.label for o in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(WORKLOADS[workload], fontsize=9, loc="left")
        if rows[0].runs[0]["unit"] not in ("MB", "s"):
            ax.set_xscale("log")
        for i, v in enumerate(values):
            ax.text(v, i, " " + fmt(v, rows[i].runs[0]["unit"]), va="center", fontsize=7)
        target = rows[0].row.target
        if target and target[0] in (">=", "<="):
            ax.axvline(target[1], color="tab:red", lw=0.8, ls="--")
    twins = sorted({o.row.baseline[:7] for o in outcomes if o.row.baseline})
    fig.suptitle(
        f"redisflow (blue), {''.join(f'redisflow@{t} (light blue), ' for t in twins)}"
        f"peers (grey), hand-written redis-py (green); one process each (cluster: as labelled)\n"
        f"{info['machine'].split(',')[1].strip()}, {info['event loop']}, "
        f"Redis {info['redis-server']}, {info['date']}; median of runs, whiskers: min-max; "
        f"dashed: redisflow's target",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def color(row: Row) -> str:
    if row.framework == "redisflow":
        return "lightsteelblue" if row.baseline else "tab:blue"
    return "tab:green" if row.framework == "redis-py" else "tab:gray"


# -- files ----------------------------------------------------------------------------------


def report(outcomes: list[Outcome], info: dict[str, Any], out_dir: str) -> None:
    """Print the tables; write results.md, results.json and results.png to ``out_dir``."""
    problems = info.get("problems", [])
    header = "\n".join(f"- {k}: {v}" for k, v in info.items() if k != "problems")
    text = f"{header}\n{table(outcomes)}\n"
    if problems:
        text += "\n" + "\n".join(f"- {line}" for line in problems) + "\n"
    print(text)
    if not out_dir:
        return
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text)
    raw = [
        {"workload": o.row.workload, "label": o.row.label, "n": o.n, "runs": o.runs,
         "error": o.error, **({"baseline": o.row.baseline, "of": o.row.of} if o.row.baseline
                              else {})}
        for o in outcomes
    ]  # fmt: skip
    (out / "results.json").write_text(json.dumps({"info": info, "rows": raw}, indent=1))
    try:
        chart(outcomes, info, out / "results.png")
    except ImportError:
        print("matplotlib is missing: no chart (pip install -e '.[bench]')", file=sys.stderr)


def cluster_table(rows: list[Outcome], outcomes: list[Outcome]) -> list[str]:
    """The cluster table: msg/s, Redis CPU per message on each master and the largest share."""
    nodes = " / ".join(str(i + 1) for i in range(cluster.MASTERS))
    lines = [
        f"| row | N | msg/s median | min - max | Redis us CPU/msg, node {nodes} | total "
        "| max node share | target | notes |",
        "|---|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    for o in rows:
        if not o.runs:
            lines.append(f"| {o.row.label} | {o.n:,} | - | | | | | | failed: {o.error} |")
            continue
        values = [r["value"] for r in o.runs]
        per_node = [
            statistics.median(r["redis_us"][j] for r in o.runs) for j in range(cluster.MASTERS)
        ]
        total = statistics.median(sum(r["redis_us"]) for r in o.runs)
        shares = [max(r["share"]) for r in o.runs]
        share = f"{statistics.median(shares):.0%} ({min(shares):.0%}-{max(shares):.0%})"
        target = ""
        if GRADED and o.row.partitions >= cluster.MASTERS:
            met = max(shares) <= cluster.MAX_SHARE
            target = f"{'met' if met else 'NOT met'} (every run <= {cluster.MAX_SHARE:.0%})"
        notes = [f"consumers {statistics.median(r['cpu_us'] for r in o.runs):.1f} us CPU/msg"]
        if o.row.processes > 1:
            split = [sum(r["handled"][j] for r in o.runs) for j in range(o.row.processes)]
            notes.append("handled " + " / ".join(f"{c / sum(split):.0%}" for c in split))
        extra = max(sum(r["handled"]) - r["n"] for r in o.runs)
        if extra:
            notes.append(f"{extra:,} redelivered")
        if o.row.baseline:
            notes.append("current / baseline {} ({})".format(*versus(o, outcomes)))
        if o.error:
            notes.append(f"failed after {len(o.runs)} runs: {o.error}")
        lines.append(
            f"| {o.row.label} | {o.n:,} | {statistics.median(values):,.0f} "
            f"| {min(values):,.0f} - {max(values):,.0f} "
            f"| {' / '.join(f'{u:.1f}' for u in per_node)} | {total:.1f} | {share} "
            f"| {target} | {'; '.join(notes)} |"
        )
    return lines + verdicts(rows, outcomes)
