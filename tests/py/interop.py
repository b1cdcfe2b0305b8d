"""Reads a permafrost archive table with PyIceberg and DuckDB and prints JSON.

Usage: interop.py REQUEST.json

The request names the catalog (PyIceberg properties), the table, and what to
compute: row count, aggregates per time bucket, sample rows by key, the
number of data files a one-window scan plans, the partition spec and the
snapshot summaries.  Both readers' answers are printed so the Rust test can
compare each with what Postgres held.
"""

import decimal
import json
import sys

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import load_catalog
from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan


def canon(v):
    if v is None:
        return None
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    if hasattr(v, "hex") and type(v).__name__ == "UUID":
        return str(v)
    return v


def table_rows(tbl, time_col):
    """Arrow table -> list of dicts, timestamps as epoch microseconds."""
    cols = {}
    for name in tbl.column_names:
        col = tbl.column(name)
        if pa.types.is_timestamp(col.type):
            col = col.cast(pa.timestamp("us")).cast(pa.int64())
        cols[name] = col.to_pylist()
    n = tbl.num_rows
    return [{k: canon(v[i]) for k, v in cols.items()} for i in range(n)]


def aggregates(tbl, time_col, unit, sum_cols):
    ts = tbl.column(time_col)
    if pa.types.is_timestamp(ts.type) and ts.type.tz is not None:
        ts = ts.cast(pa.timestamp("us", tz="UTC"))
    bucket = pc.floor_temporal(ts, multiple=1, unit=unit)
    bucket = bucket.cast(pa.timestamp("us")).cast(pa.int64())
    t = pa.table({"b": bucket, **{c: tbl.column(c) for c in sum_cols}})
    aggs = [("b", "count")] + [(c, "sum") for c in sum_cols]
    g = t.group_by("b").aggregate(aggs)
    out = {}
    for row in g.to_pylist():
        key = str(row["b"])
        out[key] = [row["b_count"]] + [canon(row[f"{c}_sum"]) for c in sum_cols]
    return out


def field_ids_missing(field):
    """Fields (nested ones included) without a PARQUET:field_id."""
    n = 0 if field.metadata and b"PARQUET:field_id" in field.metadata else 1
    t = field.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        n += field_ids_missing(t.value_field)
    elif pa.types.is_struct(t):
        n += sum(field_ids_missing(t.field(i)) for i in range(t.num_fields))
    return n


def engine_ready(t, time_col):
    """What every engine relies on: format v2, standard summary totals, field
    ids in every data file, microsecond timestamps with the right UTC flag,
    partition values and time-column bounds in every manifest entry."""
    import pyarrow.parquet as pq

    schema = t.schema()
    time_id = schema.find_field(time_col).field_id
    eng = {"format_version": t.metadata.format_version, "files": 0, "missing_field_ids": 0,
           "timestamp_issues": [], "null_partitions": 0, "missing_bounds": 0,
           "summaries_without_totals": 0, "encodings": {}}
    for s in t.snapshots():
        props = s.summary.additional_properties
        if not all(k in props for k in ("total-records", "total-data-files", "added-records")):
            eng["summaries_without_totals"] += 1
    for task in t.scan().plan_files():
        df = task.file
        eng["files"] += 1
        if any(df.partition[i] is None for i in range(len(df.partition))):
            eng["null_partitions"] += 1
        if time_id not in (df.lower_bounds or {}) or time_id not in (df.upper_bounds or {}):
            eng["missing_bounds"] += 1
        with t.io.new_input(df.file_path).open() as f:
            pf = pq.ParquetFile(f)
            sch, md = pf.schema_arrow, pf.metadata
        for rg in range(md.num_row_groups):
            for c in range(md.num_columns):
                col = md.row_group(rg).column(c)
                eng["encodings"].setdefault(col.path_in_schema, set()).update(col.encodings)
        for field in sch:
            eng["missing_field_ids"] += field_ids_missing(field)
            if pa.types.is_timestamp(field.type):
                want_tz = str(schema.find_field(field.name).field_type) == "timestamptz"
                if field.type.unit != "us" or (field.type.tz is not None) != want_tz:
                    eng["timestamp_issues"].append(f"{field.name}: {field.type}")
    eng["encodings"] = {k: sorted(v) for k, v in eng["encodings"].items()}
    return eng


def main():
    req = json.load(open(sys.argv[1]))
    cat = load_catalog(req["catalog_name"], **req["catalog"])
    t = cat.load_table(req["table"])
    time_col = req["time_column"]
    res = {"pyiceberg": {}, "duckdb": {}}
    p = res["pyiceberg"]
    arrow = t.scan().to_arrow()
    p["count"] = arrow.num_rows
    p["spec"] = [
        {"name": f.name, "transform": str(f.transform), "source_id": f.source_id}
        for f in t.spec().fields
    ]
    p["schema"] = [
        {"id": f.field_id, "name": f.name, "type": str(f.field_type), "required": f.required}
        for f in t.schema().fields
    ]
    p["properties"] = dict(t.properties)
    p["snapshots"] = [
        {"snapshot_id": s.snapshot_id, "summary": dict(s.summary.additional_properties),
         "operation": str(s.summary.operation)}
        for s in sorted(t.snapshots(), key=lambda s: (s.sequence_number or 0, s.timestamp_ms))
    ]
    cur = t.current_snapshot()
    p["current_snapshot"] = None if cur is None else {
        "snapshot_id": cur.snapshot_id, "summary": dict(cur.summary.additional_properties)}
    p["windows"] = aggregates(arrow, time_col, req["unit"], req["sum_columns"])
    p["engine"] = engine_ready(t, time_col)
    key = req.get("key_column")
    keys = set(req.get("sample_keys", []))
    if key:
        sel = arrow.filter(pc.is_in(arrow.column(key), value_set=pa.array(list(keys), type=arrow.column(key).type)))
        p["rows"] = {str(r[key]): r for r in table_rows(sel, time_col)}
    if req.get("prune"):
        lo, hi = (x.replace("Z", "+00:00") for x in req["prune"])
        scan = t.scan(row_filter=And(GreaterThanOrEqual(time_col, lo), LessThan(time_col, hi)))
        p["pruned_files"] = len(list(scan.plan_files()))
        p["pruned_rows"] = scan.to_arrow().num_rows
        p["all_files"] = len(list(t.scan().plan_files()))

    if req.get("time_travel"):
        # Every retained snapshot must still read: no file it references is gone.
        p["snapshot_counts"] = {
            str(s.snapshot_id): t.scan(snapshot_id=s.snapshot_id).to_arrow().num_rows
            for s in t.snapshots()
        }

    if req.get("duckdb", True):
        import duck

        con = duck.connect()
        d = res["duckdb"]
        rest = req.get("duckdb_rest")
        if rest:
            duck.attach_rest(con, rest)
            src = "w." + req["table"]
        else:
            src = f"iceberg_scan('{t.metadata_location}')"
        d["count"] = con.execute(f"SELECT count(*) FROM {src}").fetchone()[0]
        dtbl = con.execute(f"SELECT * FROM {src}").fetch_arrow_table()
        d["windows"] = aggregates(dtbl, time_col, req["unit"], req["sum_columns"])
        if key:
            sel = dtbl.filter(pc.is_in(dtbl.column(key), value_set=pa.array(list(keys), type=dtbl.column(key).type)))
            d["rows"] = {str(r[key]): r for r in table_rows(sel, time_col)}
    print(json.dumps(res, default=str))


if __name__ == "__main__":
    main()
