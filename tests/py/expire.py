"""Expires snapshots of an Iceberg table with PyIceberg, as routine
maintenance by another engine does (S3 Tables and Glue optimizers do it
automatically): every snapshot but the current one, or those older than the
newest `keep`.

Request: {"catalog_name", "catalog", "table", "keep" (default 1),
"remove_properties" (optional: properties removed first, to imitate a table
written before they existed)}.
Answer: {"expired", "remaining", "current", "properties"}.
"""

import json
import sys

from pyiceberg.catalog import load_catalog


def main():
    req = json.load(open(sys.argv[1]))
    catalog = load_catalog(req["catalog_name"], **req["catalog"])
    table = catalog.load_table(req["table"])
    if req.get("remove_properties"):
        with table.transaction() as tx:
            tx.remove_properties(*req["remove_properties"])
        table = catalog.load_table(req["table"])
    keep = req.get("keep", 1)
    snaps = sorted(table.metadata.snapshots, key=lambda s: s.timestamp_ms)
    current = table.current_snapshot().snapshot_id
    doomed = [s.snapshot_id for s in snaps[: max(0, len(snaps) - keep)] if s.snapshot_id != current]
    if doomed:
        table.maintenance.expire_snapshots().by_ids(doomed).commit()
    table = catalog.load_table(req["table"])
    print(
        json.dumps(
            {
                "expired": len(doomed),
                "remaining": len(table.metadata.snapshots),
                "current": table.current_snapshot().snapshot_id,
                "properties": dict(table.properties),
            }
        )
    )


if __name__ == "__main__":
    main()
