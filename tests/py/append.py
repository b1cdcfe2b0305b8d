"""Appends one row to an archive table with PyIceberg (another writer).

Usage: append.py REQUEST.json   (catalog_name, catalog, table, row: {column: value},
                                  optional snapshot_properties: {key: value};
                                  or table_properties: {key: value} and no row,
                                  to set table properties instead)
Timestamps are given as epoch microseconds.
"""

import decimal
import json
import sys

import pyarrow as pa
from pyiceberg.catalog import load_catalog


def main():
    req = json.load(open(sys.argv[1]))
    t = load_catalog(req["catalog_name"], **req["catalog"]).load_table(req["table"])
    if "table_properties" in req:
        with t.transaction() as tx:
            tx.set_properties(req["table_properties"])
        return
    schema = t.schema().as_arrow()
    row = req["row"]
    cols = []
    for f in schema:
        v = row.get(f.name)
        if pa.types.is_timestamp(f.type) and v is not None:
            v = pa.scalar(v, type=pa.timestamp("us", tz="UTC")).cast(f.type).as_py()
        if pa.types.is_decimal(f.type) and v is not None:
            v = decimal.Decimal(v)
        cols.append(pa.array([v], type=f.type))
    props = {"writer": "external", **req.get("snapshot_properties", {})}
    t.append(pa.Table.from_arrays(cols, schema=schema), snapshot_properties=props)
    print(json.dumps({"snapshot_id": t.current_snapshot().snapshot_id}))


if __name__ == "__main__":
    main()
