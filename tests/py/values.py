"""Reads every value of an archive table with PyIceberg and DuckDB, canonicalised.

Usage: values.py REQUEST.json   (catalog_name, catalog, table, key_column, duckdb_rest?)

Prints {"pyiceberg": {key: {column: value}}, "duckdb": {...}} where each value
is put into a canonical JSON form decided by its Arrow type, so it can be
compared with Postgres' own rendering of the same value (tests/it/types.rs
builds that with SQL):
  integers → int; floats → float or "NaN"/"Infinity"/"-Infinity";
  decimals → plain string with all scale digits; strings → string;
  binary → lowercase hex; uuid → 32 lowercase hex digits;
  date → days since 1970-01-01; time → microseconds since midnight;
  timestamp(tz) → microseconds since the epoch (UTC);
  list → list; struct → object.
"""

import decimal
import json
import math
import sys
import uuid

import pyarrow as pa
from pyiceberg.catalog import load_catalog


def canon_scalar(v):
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        return v
    if isinstance(v, decimal.Decimal):
        return format(v, "f")
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    if isinstance(v, uuid.UUID):
        return v.hex
    return v


def prepare(arr):
    """Casts temporal types to integers (Python's datetime cannot hold every
    Postgres value) and recurses into lists and structs."""
    t = arr.type
    if pa.types.is_timestamp(t):
        return arr.cast(pa.timestamp("us", tz=t.tz)).cast(pa.int64())
    if pa.types.is_date32(t):
        return arr.cast(pa.int32())
    if pa.types.is_time64(t) or pa.types.is_time32(t):
        return arr.cast(pa.time64("us")).cast(pa.int64())
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        # offsets index the physical child array (flatten() would drop the
        # values behind null slots and shift everything after them).
        values = prepare(arr.values)
        return pa.ListArray.from_arrays(arr.offsets, values, mask=arr.is_null())
    if pa.types.is_struct(t):
        children = [prepare(arr.field(i)) for i in range(t.num_fields)]
        names = [t.field(i).name for i in range(t.num_fields)]
        return pa.StructArray.from_arrays(children, names=names, mask=arr.is_null())
    if isinstance(t, pa.ExtensionType):
        return prepare(arr.storage)
    return arr


def canon(v):
    if isinstance(v, list):
        return [canon(x) for x in v]
    if isinstance(v, dict):
        return {k: canon(x) for k, x in v.items()}
    return canon_scalar(v)


def rows(tbl, key):
    cols = {}
    for name in tbl.column_names:
        col = tbl.column(name).combine_chunks() if tbl.num_rows else pa.array([], type=tbl.column(name).type)
        cols[name] = prepare(col).to_pylist()
    out = {}
    for i in range(tbl.num_rows):
        out[str(cols[key][i])] = {name: canon(cols[name][i]) for name in tbl.column_names}
    return out


def schema_of(schema):
    return [{"id": f.field_id, "name": f.name, "type": str(f.field_type), "required": f.required} for f in schema.fields]


def main():
    req = json.load(open(sys.argv[1]))
    if req.get("parquet_file"):
        import pyarrow.parquet as pq

        print(json.dumps({"parquet": rows(pq.read_table(req["parquet_file"]), req["key_column"])}))
        return
    t = load_catalog(req["catalog_name"], **req["catalog"]).load_table(req["table"])
    res = {"pyiceberg": rows(t.scan().to_arrow(), req["key_column"])}
    if req.get("snapshots"):
        # Time travel: every snapshot read with its own schema.
        res["schema"] = schema_of(t.schema())
        res["snapshots"] = []
        for s in sorted(t.snapshots(), key=lambda s: s.sequence_number or 0):
            schema = t.schemas()[s.schema_id] if s.schema_id is not None else t.schema()
            res["snapshots"].append({
                "snapshot_id": s.snapshot_id,
                "schema_id": s.schema_id,
                "schema": schema_of(schema),
                "rows": rows(t.scan(snapshot_id=s.snapshot_id).to_arrow(), req["key_column"]),
            })
    if not req.get("duckdb", True):
        print(json.dumps(res))
        return
    import duck

    con = duck.connect()
    tbl = con.execute(f"SELECT * FROM iceberg_scan('{t.metadata_location}')").to_arrow_table()
    res["duckdb"] = rows(tbl, req["key_column"])
    print(json.dumps(res))


if __name__ == "__main__":
    main()
