"""Changes an archive table's schema with PyIceberg, as another engine
(Spark's ALTER TABLE, an analyst's notebook) would.

Request: {"catalog_name", "catalog", "table", and one of "add" (a name: a
new optional string column), "drop" (a name), "rename" ([from, to])}.
Answer: {"columns": the current schema's column names}.
"""

import json
import sys

from pyiceberg.catalog import load_catalog
from pyiceberg.types import StringType


def main():
    req = json.load(open(sys.argv[1]))
    catalog = load_catalog(req["catalog_name"], **req["catalog"])
    table = catalog.load_table(req["table"])
    with table.update_schema() as update:
        if "add" in req:
            update.add_column(req["add"], StringType())
        if "drop" in req:
            update.delete_column(req["drop"])
        if "rename" in req:
            update.rename_column(*req["rename"])
    table = catalog.load_table(req["table"])
    print(json.dumps({"columns": [f.name for f in table.schema().fields]}))


if __name__ == "__main__":
    main()
