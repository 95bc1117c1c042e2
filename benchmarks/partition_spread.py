"""Where the partitions of several sources land on a real cluster (docs/scaling.md, "One
source on one slot, unless partitioned"): ten sources of three partitions, on a local
6-master cluster started with ``redisflow.testing.cluster``, in the current tag scheme and
in the first one.

    python benchmarks/partition_spread.py [--masters 6] [--partitions 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from redisflow.features.partitions import Layout
from redisflow.keys import slot
from redisflow.testing.cluster import RedisCluster

NAMES = [
    "emails", "orders", "invoices", "signups", "webhooks",
    "payments", "events", "alerts", "reports", "exports",
]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--masters", type=int, default=6)
    ap.add_argument("--partitions", type=int, default=3)
    args = ap.parse_args()
    cluster = RedisCluster.start(masters=args.masters)
    try:
        masters = [node.port for node in cluster.masters()]
        for named in (True, False):
            layout = Layout(args.partitions, named)
            count = dict.fromkeys(masters, 0)
            slots: set[int] = set()
            for name in NAMES:
                for key in layout.keys(name):
                    slots.add(slot(key))
                    count[cluster.owner(slot(key)).port] += 1
            scheme = "tags from the source's slot" if named else "first scheme (tags from slot 0)"
            per = " / ".join(str(count[m]) for m in masters)
            print(f"{scheme}: partitions per master {per}; {len(slots)} distinct slots")
            for name in NAMES:
                where = [masters.index(cluster.owner(slot(k)).port) + 1 for k in layout.keys(name)]
                print(f"  {name}: masters {where}")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
