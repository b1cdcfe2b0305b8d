"""Checks permafrost's exactly-once invariant for a sensor_readings-shaped table.

Usage: reconcile.py REQUEST.json

expected = rows of the `expected_tables` in Postgres (a copy taken before the
test, plus a log of every row inserted during it);
actual   = rows of the Iceberg table (read with PyIceberg through the catalog)
           + rows still in the source table.
Prints JSON: ok (multisets equal), counts, and samples of rows missing,
unexpected, archived twice, or both archived and still in Postgres.
"""

import decimal
import json
import sys
from collections import Counter

import psycopg2
import pyarrow as pa
from pyiceberg.catalog import load_catalog

COLS = ["id", "recorded_at", "sensor_id", "sensor_name", "value", "unit", "quality", "payload"]
PG_SELECT = (
    "SELECT id, (extract(epoch FROM recorded_at) * 1000000)::int8, sensor_id, sensor_name, value, unit, "
    "quality::text, payload::text FROM {}"
)


def canon(v):
    if isinstance(v, decimal.Decimal):
        return str(v)
    return v


def pg_rows(cur, table):
    cur.execute(PG_SELECT.format(table))
    return [tuple(canon(v) for v in r) for r in cur.fetchall()]


def iceberg_rows(req):
    cat = load_catalog(req["catalog_name"], **req["catalog"])
    try:
        t = cat.load_table(req["table"])
    except Exception:  # noqa: BLE001 - no table yet means nothing archived
        return [], 0
    a = t.scan().to_arrow()
    cols = {}
    for name in COLS:
        col = a.column(name)
        if pa.types.is_timestamp(col.type):
            col = col.cast(pa.timestamp("us")).cast(pa.int64())
        cols[name] = col.to_pylist()
    rows = [tuple(canon(cols[c][i]) for c in COLS) for i in range(a.num_rows)]
    return rows, len(t.snapshots())


def main():
    req = json.load(open(sys.argv[1]))
    con = psycopg2.connect(req["pg_dsn"])
    cur = con.cursor()
    expected = Counter()
    for t in req["expected_tables"]:
        expected.update(pg_rows(cur, t))
    pg = Counter(pg_rows(cur, req["source_table"]))
    ice_list, snapshots = iceberg_rows(req)
    ice = Counter(ice_list)
    actual = ice + pg
    both = [r for r in ice if r in pg]
    twice = [r for r, n in ice.items() if n > 1]
    missing = list((expected - actual).elements())
    unexpected = list((actual - expected).elements())
    print(json.dumps({
        "ok": actual == expected and not both and not twice,
        "expected": sum(expected.values()),
        "iceberg": sum(ice.values()),
        "postgres": sum(pg.values()),
        "snapshots": snapshots,
        "missing": [r[0] for r in missing[:20]],
        "unexpected": [r[0] for r in unexpected[:20]],
        "both": [r[0] for r in both[:20]],
        "twice": [r[0] for r in twice[:20]],
    }))


if __name__ == "__main__":
    main()
