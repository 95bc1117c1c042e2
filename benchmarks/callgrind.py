"""CPU instructions per message with valgrind's callgrind: exact and repeatable, where wall
time on a shared 2-core machine moves by +-20 % between runs of the same code.

For each tree (``.``: this checkout; any other git ref: its ``redisflow/`` exported the way
``suite.py --baseline`` does) and each case of ``fw_redisflow.py``, the case runs under
``valgrind --tool=callgrind`` twice, with N and with 2N messages, on the suite's private
Redis; ``(I(2N) - I(N)) / N`` is what one more message costs the Python process, its
start-up, imports and connections cancelling out. For a drain that is the fill (one
``enqueue_many`` per 10,000) plus the drain; for a produce case, the calls alone. Counts
still move a little between runs of the same tree (how many messages each fetch finds,
how often a worker waits: timing decides), so ``--runs`` repeats each pair.

    python benchmarks/callgrind.py --trees .,fca8f99 --cases queue,stream,produce --n 10000
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from suite import HERE, ROOT, PrivateRedis, child_env, export_baseline


def instructions(tree: Path, case: str, url: str, n: int) -> int:
    """The instructions the case's process ran (every thread), from callgrind's total."""
    with tempfile.TemporaryDirectory(prefix="rf-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        command = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            sys.executable, str(HERE / "fw_redisflow.py"), "--case", case, "--url", url,
            "--n", str(n),
        ]  # fmt: skip
        done = subprocess.run(command, env=child_env(tree), cwd=HERE, capture_output=True)
        if done.returncode or b"RESULT " not in done.stdout:
            raise SystemExit(f"{case} at n={n} failed:\n{done.stderr.decode()[-2000:]}")
        totals = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
        assert totals is not None, "no totals in the callgrind output"
        return int(totals.group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trees", default=".", help="comma-separated: . (this checkout) or refs")
    p.add_argument("--cases", default="queue,stream,produce,produce_concurrent")
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=1, help="pairs per cell: median (min-max)")
    args = p.parse_args()
    trees = {ref: ROOT if ref == "." else export_baseline(ref)[1] for ref in args.trees.split(",")}
    redis = PrivateRedis()
    try:
        print(f"| case | {' | '.join(trees)} |")
        print(f"|---|{'--:|' * len(trees)}")
        for case in args.cases.split(","):
            cells = []
            for tree in trees.values():
                per = sorted(
                    (instructions(tree, case, redis.url, 2 * args.n)
                     - instructions(tree, case, redis.url, args.n)) / args.n
                    for _ in range(args.runs)
                )  # fmt: skip
                spread = f" ({per[0]:,.0f}-{per[-1]:,.0f})" if len(per) > 1 else ""
                cells.append(f"{statistics.median(per):,.0f}{spread}")
            print(f"| {case} | {' | '.join(cells)} |", flush=True)
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
