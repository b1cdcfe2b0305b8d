"""DuckDB, the tests' second Iceberg engine: a connection with the
extensions the venv's wheels ship, and the test REST catalog attached."""

import glob
import site

import duckdb


def connect():
    """A DuckDB connection with the avro, httpfs and iceberg extensions
    loaded from the venv (no download)."""
    con = duckdb.connect()
    sp = site.getsitepackages()[0]
    for ext in ["avro", "httpfs", "iceberg"]:
        path = glob.glob(f"{sp}/duckdb_extension_{ext}/extensions/*/{ext}.duckdb_extension")
        if path:
            con.execute(f"LOAD '{path[0]}'")
    return con


def attach_rest(con, rest, writable=False):
    """Attaches the REST catalog `rest` ({key, secret, uri, s3_host}: the S3
    key pair is also its OAuth2 client) as `w`; `writable` for DELETE and
    friends (S3 keys from the secret, not vended)."""
    con.execute(
        f"CREATE SECRET s3s (TYPE s3, KEY_ID '{rest['key']}', SECRET '{rest['secret']}', "
        f"ENDPOINT '{rest['s3_host']}', URL_STYLE 'path', USE_SSL false, REGION 'us-east-1')"
    )
    con.execute(
        f"CREATE SECRET ice (TYPE iceberg, CLIENT_ID '{rest['key']}', CLIENT_SECRET '{rest['secret']}', "
        f"OAUTH2_SERVER_URI '{rest['uri']}/v1/oauth/tokens')"
    )
    write = ", ACCESS_DELEGATION_MODE 'none', READ_ONLY false" if writable else ""
    con.execute(f"ATTACH 's3://warehouse' AS w (TYPE iceberg, ENDPOINT '{rest['uri']}', SECRET ice{write})")
