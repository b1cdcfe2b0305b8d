"""Parses a Prometheus text exposition with the official client library's
parser (a malformed exposition raises).  Request: {"text": "..."}.  Prints
{"families": {name: type}, "samples": {sample name: {table label: value}}}.
"""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    req = json.load(open(sys.argv[1]))
    families, samples = {}, {}
    for fam in text_string_to_metric_families(req["text"]):
        families[fam.name] = fam.type
        for s in fam.samples:
            samples.setdefault(s.name, {})[s.labels.get("table", "")] = s.value
    print(json.dumps({"families": families, "samples": samples}))


if __name__ == "__main__":
    main()
