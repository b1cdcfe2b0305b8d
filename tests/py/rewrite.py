"""Rewrites an archive table's files the way another engine's maintenance
does, with PyIceberg.

Request: {"catalog_name", "catalog", "table", "column", "from", "to" (epoch
microseconds: a range of whole partitions), "mode"}:
- "compact": every data file of the range read and written again as one,
  committed as a `replace` snapshot (what Spark's `rewrite_data_files` or a
  Glue / S3 Tables optimizer commits: same rows, fewer files);
- "compact-losing-a-row": the same, but the first row is left out (a broken
  compactor: a `replace` that does not keep the rows);
- "delete": PyIceberg's row-level delete of the range's rows whose `where`
  column equals `value` (copy-on-write: the files rewritten without them);
- "delete-mor": DuckDB's `DELETE` of the rows whose `where` column is one
  of `values`, through the REST catalog (merge-on-read: the data files stay,
  a positional delete file per data file lists the rows gone, as Spark,
  Trino and Flink write them); needs "duckdb_rest" (key, secret, uri,
  s3_host).
- "ids-duckdb": no change; DuckDB reads the table (deletes applied:
  PyIceberg cannot plan equality deletes or deletion vectors) through the
  REST catalog ("duckdb_rest") or from its metadata file, and answers
  {"ids": every row's `where` column, sorted}.
Answer: {"operation", "files_before", "files_after", "rows", "delete_files"
(live delete files after the change)}.
"""

import json
import sys

import pyarrow as pa
from pyiceberg.catalog import load_catalog
from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, LessThan
from pyiceberg.io.pyarrow import _dataframe_to_data_files
from pyiceberg.table.snapshots import Operation, Summary
from pyiceberg.table.update.snapshot import _OverwriteFiles


class _Replace(_OverwriteFiles):
    """PyIceberg's file overwrite committed as a `replace` (its summary
    code knows only append, overwrite and delete)."""

    def _summary(self, snapshot_properties):
        self._operation = Operation.OVERWRITE
        try:
            summary = super()._summary(snapshot_properties)
        finally:
            self._operation = Operation.REPLACE
        return Summary(Operation.REPLACE, **summary.additional_properties)


def in_range(req):
    col = req["column"]
    ts = lambda us: pa.scalar(us, type=pa.timestamp("us", tz="UTC")).as_py()
    return And(GreaterThanOrEqual(col, ts(req["from"])), LessThan(col, ts(req["to"])))


def compact(table, req, losing):
    scan = table.scan(row_filter=in_range(req))
    files = [task.file for task in scan.plan_files()]
    rows = scan.to_arrow()
    if losing:
        rows = rows.slice(1)
    tx = table.transaction()
    new = list(_dataframe_to_data_files(table_metadata=tx.table_metadata, df=rows, io=table.io))
    rewrite = _Replace(
        operation=Operation.REPLACE,
        transaction=tx,
        io=table.io,
        snapshot_properties={"writer": "external-compaction"},
    )
    with rewrite:
        for f in files:
            rewrite.delete_data_file(f)
        for f in new:
            rewrite.append_data_file(f)
    tx.commit_transaction()
    return len(files), len(new), rows.num_rows


def delete_merge_on_read(req):
    import duck

    con = duck.connect()
    duck.attach_rest(con, req["duckdb_rest"], writable=True)
    values = ", ".join(str(int(v)) for v in req["values"])
    (deleted,) = con.execute(f"DELETE FROM w.{req['table']} WHERE {req['where']} IN ({values})").fetchone()
    return deleted


def ids_duckdb(req, table):
    import duck

    con = duck.connect()
    if req.get("duckdb_rest"):
        duck.attach_rest(con, req["duckdb_rest"])
        src = f"w.{req['table']}"
    else:
        src = f"iceberg_scan('{table.metadata_location}')"
    rows = con.execute(f"SELECT {req['where']} FROM {src} ORDER BY 1").fetchall()
    return [r[0] for r in rows]


def main():
    req = json.load(open(sys.argv[1]))
    catalog = load_catalog(req["catalog_name"], **req["catalog"])
    table = catalog.load_table(req["table"])
    if req["mode"] == "ids-duckdb":
        print(json.dumps({"ids": ids_duckdb(req, table)}))
        return
    mode = req["mode"]
    if mode in ("compact", "compact-losing-a-row"):
        before, after, rows = compact(table, req, mode != "compact")
    elif mode == "delete":
        before = len(list(table.scan(row_filter=in_range(req)).plan_files()))
        table.delete(And(in_range(req), EqualTo(req["where"], req["value"])))
        after, rows = None, None
    elif mode == "delete-mor":
        before = len(list(table.scan().plan_files()))
        rows = delete_merge_on_read(req)
        after = None
    else:
        raise SystemExit(f"unknown mode {mode}")
    table = catalog.load_table(req["table"])
    delete_files = {d.file_path for task in table.scan().plan_files() for d in task.delete_files}
    print(
        json.dumps(
            {
                "operation": table.current_snapshot().summary.operation.value,
                "files_before": before,
                "files_after": after,
                "rows": rows,
                "delete_files": len(delete_files),
            }
        )
    )


if __name__ == "__main__":
    main()
