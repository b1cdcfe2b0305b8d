"""Checks of the HTTP API (tests/it/serve.rs) with other tools.

mode "decode": reads the streamed answers with pyarrow (NDJSON, CSV, Arrow
IPC stream, Parquet) and returns per format the row count, the sorted ids and
the sum of `value`.
mode "openapi": validates the OpenAPI document with openapi-spec-validator.
"""
import json
import sys


def decode(files):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.ipc as ipc
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    readers = {
        "jsonl": lambda p: pjson.read_json(p),
        "csv": lambda p: pcsv.read_csv(p),
        "arrow": lambda p: ipc.open_stream(pa.OSFile(p)).read_all(),
        "parquet": lambda p: pq.read_table(p),
    }
    out = {}
    for fmt, path in files.items():
        t = readers[fmt](path)
        ids = sorted(int(i) for i in t.column("id").to_pylist())
        values = [float(v) for v in t.column("value").to_pylist() if v is not None]
        out[fmt] = {
            "rows": t.num_rows,
            "ids": ids,
            "value_sum": round(sum(values), 6),
            "columns": t.column_names,
        }
    return out


def openapi(path):
    from openapi_spec_validator import validate
    from openapi_spec_validator.readers import read_from_filename

    spec, _ = read_from_filename(path)
    validate(spec)
    return {"valid": True, "openapi": spec["openapi"], "paths": sorted(spec["paths"])}


def main():
    with open(sys.argv[1]) as f:
        req = json.load(f)
    if req["mode"] == "decode":
        res = decode(req["files"])
    elif req["mode"] == "openapi":
        res = openapi(req["path"])
    else:
        raise SystemExit(f"unknown mode {req['mode']}")
    json.dump(res, sys.stdout)


if __name__ == "__main__":
    main()
