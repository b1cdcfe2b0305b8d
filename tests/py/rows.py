"""Reads the key and time columns of archive tables with PyIceberg and DuckDB.

Usage: rows.py REQUEST.json

Request: {"catalog_name", "catalog": {PyIceberg properties},
          "tables": [{"table": "ns.t", "key": "id", "time": "Recorded At"}]}
Answer:  {"ns.t": {"spec": [partition field names],
                   "pyiceberg": {"<key>": <time as epoch µs or null>},
                   "duckdb": {...}}}
Times are compared as integers so any value (BC, far future) survives.
"""

import json
import sys

import pyarrow as pa
from pyiceberg.catalog import load_catalog


def keyed(tbl, key, time):
    col = tbl.column(time)
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.int64())
    return {str(k): v for k, v in zip(tbl.column(key).to_pylist(), col.to_pylist())}


def duckdb_connection():
    import duck

    return duck.connect()


def main():
    req = json.load(open(sys.argv[1]))
    cat = load_catalog(req["catalog_name"], **req["catalog"])
    con = duckdb_connection() if req.get("duckdb", True) else None
    out = {}
    for spec in req["tables"]:
        t = cat.load_table(spec["table"])
        res = {"spec": [f.name for f in t.spec().fields]}
        res["pyiceberg"] = keyed(t.scan().to_arrow(), spec["key"], spec["time"])
        if con is not None:
            loc = t.metadata_location.replace("'", "''")
            tbl = con.execute(f"SELECT * FROM iceberg_scan('{loc}')").fetch_arrow_table()
            res["duckdb"] = keyed(tbl, spec["key"], spec["time"])
        out[spec["table"]] = res
    print(json.dumps(out))


if __name__ == "__main__":
    main()
