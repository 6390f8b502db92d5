"""Request log benchmark: committed appends per second of each backend, one writer and several at once.

Every append is acknowledged only after its transaction committed (SQLite WAL + synchronous=FULL; PostgreSQL
synchronous_commit=on with fsync), so the figures are durable appends. Concurrent callers are group-committed:
`commits` shows how many transactions served them. PostgreSQL is a throw-away local server (Debian's
postgresql, as the tests start it), on the same disk as the SQLite file.

    python -m benchmarks.bench_request_log [--requests 2000] [--threads 1 8 32]

Writes artifacts/benchmarks/request_log.json and prints a README row.
"""

import argparse
import json
import os
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from components.request_log import RequestRecord
from components.request_log_pg import PASSWORD_ENV, postgres_server
from components.request_logs import open_request_log


def _record(n: int) -> RequestRecord:
    items, scores = list(range(n % 50, n % 50 + 10)), [1.0 - i / 10 for i in range(10)]
    return RequestRecord(uuid.uuid4().hex, datetime.now(UTC), n % 1000, 10, True, {"genres": ["Drama"]},
                         {"age": 30, "gender": "F"}, items, scores, "v1", False, False, 4.2)


def measure(target: str, requests: int, threads: int) -> dict[str, float]:
    """Append `requests` requests from `threads` threads; committed appends/s and transactions used."""
    with open_request_log(target) as log:
        per = requests // threads

        def write(t: int) -> None:
            for i in range(per):
                log.append_request(_record(t * per + i))

        workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall = time.perf_counter() - t0
        return {"threads": threads, "appends": per * threads, "appends_per_s": round(per * threads / wall, 1),
                "commits": log.commits, "wall_s": round(wall, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--out", type=Path, default=Path("artifacts/benchmarks/request_log.json"))
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"sqlite": [], "postgresql": []}
    with tempfile.TemporaryDirectory() as tmp, postgres_server() as pg:
        os.environ[PASSWORD_ENV] = pg.password
        for threads in args.threads:
            results["sqlite"].append(measure(str(Path(tmp) / f"log-{threads}.sqlite"), args.requests, threads))
            url = pg.create_database(f"bench_{threads}")
            results["postgresql"].append(measure(url, args.requests, threads))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"requests": args.requests, "cpus": os.cpu_count(), "results": results},
                                   indent=2), encoding="utf-8")
    print(json.dumps(results, indent=2))
    row = "; ".join(f"{name}: " + ", ".join(f"{r['threads']} writer(s) {r['appends_per_s']:,.0f}/s"
                                            for r in rows) for name, rows in results.items())
    print(f"| request log, committed appends (`bench_request_log`) | {row} |")


if __name__ == "__main__":
    main()
