"""The AWS SDK's own RDS IAM token (boto3 `generate_db_auth_token`), signed
with the given credentials at a fixed time, to compare permafrost's with.

Request: {"host", "port", "user", "region", "key", "secret", "session_token",
"time" (unix seconds)}.  Answer: {"token"}.
"""

import datetime
import json
import sys

import boto3
import botocore.auth


def main():
    req = json.load(open(sys.argv[1]))
    fixed = datetime.datetime.fromtimestamp(req["time"], tz=datetime.timezone.utc)
    botocore.auth.get_current_datetime = lambda *a, **k: fixed.replace(tzinfo=None)
    session = boto3.Session(
        aws_access_key_id=req["key"],
        aws_secret_access_key=req["secret"],
        aws_session_token=req.get("session_token"),
        region_name=req["region"],
    )
    token = session.client("rds").generate_db_auth_token(
        DBHostname=req["host"], Port=req["port"], DBUsername=req["user"], Region=req["region"]
    )
    print(json.dumps({"token": token}))


if __name__ == "__main__":
    main()
