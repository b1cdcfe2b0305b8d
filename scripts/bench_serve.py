"""Timing loop of scripts/bench-serve: the HTTP API next to DuckDB."""
import json
import random
import statistics
import sys
import time
import urllib.request

url, metadata, max_id, rows, profile = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
N, WARM = 30, 3
rng = random.Random(7)
DAY = "2024-01-15"


def post(body):
    req = urllib.request.Request(
        f"{url}/api/v1/tables/sensor_readings/query",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def timed(fn, args):
    out = []
    for i, a in enumerate(args):
        t0 = time.perf_counter()
        res = fn(a)
        dt = time.perf_counter() - t0
        if i >= WARM:
            out.append(dt * 1000)
    return out, res


def stats(ms):
    ms = sorted(ms)
    return statistics.median(ms), ms[int(0.95 * (len(ms) - 1))]


day_body = {
    "columns": ["id", "recorded_at", "value"],
    "filters": {"sensor_id": 3},
    "from": DAY, "to": "2024-01-16", "limit": 1000,
}
ids = [rng.randint(1, max_id) for _ in range(N + WARM)]
api_day, page = timed(lambda _: post(day_body), range(N + WARM))
api_point, point = timed(lambda i: post({"filters": {"id": i}}), ids)
assert page["returned"] == 1000 and page["files_scanned"] == 1, page
assert point["returned"] == 1, point

import glob  # noqa: E402
import site  # noqa: E402

import duckdb  # noqa: E402

con = duckdb.connect()
# The extensions come as wheels (tests/requirements.txt), as in the tests.
for ext in ["avro", "iceberg"]:
    path = glob.glob(f"{site.getsitepackages()[0]}/duckdb_extension_{ext}/extensions/*/{ext}.duckdb_extension")
    con.execute(f"LOAD '{path[0]}'" if path else f"LOAD {ext}")
scan = f"iceberg_scan('{metadata}')"
day_sql = (f"SELECT id, recorded_at, value FROM {scan} WHERE sensor_id = 3 AND recorded_at >= TIMESTAMPTZ '{DAY}' "
           f"AND recorded_at < TIMESTAMPTZ '2024-01-16' ORDER BY recorded_at, id LIMIT 1000")
duck_day, got = timed(lambda _: con.execute(day_sql).fetchall(), range(N + WARM))
assert len(got) == 1000
duck_point, got = timed(lambda i: con.execute(f"SELECT * FROM {scan} WHERE id = {i}").fetchall(), ids)
assert len(got) == 1

print(f"rows={rows} profile={profile} (median / p95 of {N} requests, ms); "
      f"files scanned: one day {page['files_scanned']}, point {point['files_scanned']}")
for name, a, d in [("one-day filtered query", api_day, duck_day), ("point lookup by id", api_point, duck_point)]:
    am, ap = stats(a)
    dm, dp = stats(d)
    print(f"{name:24s} permafrost serve {am:8.1f} / {ap:8.1f}   duckdb iceberg_scan {dm:8.1f} / {dp:8.1f}   ratio {am / dm:5.2f}")
