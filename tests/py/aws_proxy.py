"""An AWS front for the tests that enforces credential expiry as AWS does.

Usage: aws_proxy.py LEDGER LOG S3_URL GLUE_URL [REST_URL]

LEDGER is the file a test's credential process appends to, one JSON object
per line: {"key": access key id, "expires": unix seconds}.  Every request is
checked against it by the access key id in its SigV4 signature: an unknown
key is refused (403 InvalidAccessKeyId), a key past its expiry too (403
ExpiredToken), exactly as AWS refuses a client that keeps temporary
credentials too long.  Accepted requests are forwarded: to S3_URL (SeaweedFS,
which checks signatures against its one identity, so the request is signed
again with this process's AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) or to
GLUE_URL (moto, which checks no signature) as they came.

LOG gets one JSON object per request: {"t", "service", "key", "ok",
"target"} and, for Glue CreateTable/UpdateTable, the request "body".

With REST_URL (an Iceberg REST catalog) a third front forwards the catalog's
requests as they came and, like Polaris or Unity, vends S3 keys with every
table it loads or creates when asked to (`X-Iceberg-Access-Delegation:
vended-credentials`): a new key each time, living PF_VENDED_LIFE
seconds (default 4), recorded in LEDGER, in the response's `config` with
`s3.session-token-expires-at-ms` and the S3 front as `s3.endpoint` (with
PF_VEND_AS=storage-credentials the keys go to `storage-credentials` under
the prefix s3://warehouse/ instead, beside a decoy key for s3://); LOG gets
{"service": "rest", "vended": key, "expires"}.  PF_S3_DELAY_MS delays every
S3 request (an object store across a network; default none).  With
PF_TOKEN_LIFE (seconds) the catalog's OAuth2 tokens live that long, as
its token endpoint's `expires_in` says: a request with an older one is
refused (401 NotAuthorizedException), logged {"service": "rest", "ok":
false, "why": "token expired"}; each token handed out is logged
{"service": "rest", "token": n}.  A POST to /__expire_tokens on the REST
front expires every token handed out so far (a revocation, or a catalog
whose clock runs ahead).  With PF_REST_SIGV4 (a signing name, e.g.
s3tables) the REST front is an AWS one, as S3 Tables' endpoint: every
request must be SigV4-signed for that service by a known, unexpired key
(the ledger's; its secret is "s-" + key), the signature checked with
botocore; accepted requests are signed again with this process's keys for
the catalog behind (SeaweedFS checks SigV4 against its one identity).

Listens on free loopback ports (S3, Glue[, REST]) and prints them on one line.
"""

import http.client
import json
import os
import re
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import hmac

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

LEDGER, LOG, S3_URL, GLUE_URL = sys.argv[1:5]
REST_URL = sys.argv[5] if len(sys.argv) > 5 else None
VENDED_LIFE = float(os.environ.get("PF_VENDED_LIFE", "4"))
TOKEN_LIFE = int(os.environ.get("PF_TOKEN_LIFE", "0"))
REST_SIGV4 = os.environ.get("PF_REST_SIGV4")
VEND_AS = os.environ.get("PF_VEND_AS", "config")
TOKENS = {}
S3_DELAY = float(os.environ.get("PF_S3_DELAY_MS", "0")) / 1000
PORTS = {}
LOG_LOCK = threading.Lock()
SCOPE = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/]+)/([^/]+)/aws4_request")
DROPPED = {
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
}


def ledger():
    keys = {}
    try:
        with open(LEDGER) as f:
            for line in f:
                if line.strip():
                    e = json.loads(line)
                    keys[e["key"]] = e["expires"]
    except FileNotFoundError:
        pass
    return keys


def log(entry):
    with LOG_LOCK, open(LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")


class Front(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    service = "?"
    target = ""

    def log_message(self, *args):
        pass

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

    def refuse(self, code, message):
        if self.service == "s3":
            body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
            ctype = "application/xml"
        else:
            body = json.dumps({"__type": code + "Exception", "message": message}).encode()
            ctype = "application/x-amz-json-1.1"
        self.send_response(403)
        self.send_header("Content-Type", ctype)
        self.send_header("x-amzn-ErrorType", code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def expired_token(self):
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        issued = TOKENS.get(token)
        return TOKEN_LIFE and issued is not None and time.time() - issued > TOKEN_LIFE

    def unauthorized(self):
        body = json.dumps({"error": {"message": "Token expired", "type": "NotAuthorizedException", "code": 401}}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        body = self.body()
        if self.service == "rest":
            if self.path == "/__expire_tokens":
                with LOG_LOCK:
                    for token in TOKENS:
                        TOKENS[token] = 0
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if REST_SIGV4:
                return self.signed_rest(body)
            if self.expired_token():
                log({"t": time.time(), "service": "rest", "ok": False, "why": "token expired",
                     "method": self.command, "path": self.path.split("?")[0]})
                return self.unauthorized()
            return self.forward(body, "us-east-1")
        if self.service == "s3" and S3_DELAY:
            time.sleep(S3_DELAY)
        auth = self.headers.get("Authorization", "")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        auth += " Credential=" + query.get("X-Amz-Credential", [""])[0]
        m = SCOPE.search(auth)
        key, region = (m.group(1), m.group(2)) if m else ("", "us-east-1")
        target = self.headers.get("X-Amz-Target", "")
        entry = {"t": time.time(), "service": self.service, "key": key, "target": target}
        if target.endswith(("CreateTable", "UpdateTable")):
            entry["body"] = json.loads(body or b"{}")
        expires = ledger().get(key)
        if expires is None:
            log({**entry, "ok": False, "why": "unknown key"})
            return self.refuse("InvalidAccessKeyId", f"unknown access key {key!r}")
        if time.time() > expires:
            log({**entry, "ok": False, "why": "expired"})
            return self.refuse("ExpiredToken", "The provided token has expired.")
        log({**entry, "ok": True})
        self.forward(body, region)

    def signed_rest(self, body):
        """An AWS REST catalog's check: a known, unexpired key and a valid
        SigV4 signature for REST_SIGV4."""
        auth = self.headers.get("Authorization", "")
        m = SCOPE.search(auth)
        key, region, service = m.groups() if m else ("", "us-east-1", "")
        entry = {"t": time.time(), "service": "rest", "key": key, "method": self.command,
                 "path": self.path.split("?")[0]}
        expires = ledger().get(key)
        if expires is None:
            log({**entry, "ok": False, "why": "unknown key"})
            return self.refuse("UnrecognizedClient", "The security token included in the request is invalid.")
        if time.time() > expires:
            log({**entry, "ok": False, "why": "expired"})
            return self.refuse("ExpiredToken", "The security token included in the request is expired")
        if service != REST_SIGV4 or not self.signature_valid(auth, body, key, region, service):
            log({**entry, "ok": False, "why": "signature"})
            return self.refuse("InvalidSignature", "The request signature we calculated does not match the signature you provided.")
        log({**entry, "ok": True})
        self.forward(body, region)

    def signature_valid(self, auth, body, key, region, service):
        """Whether `auth` is botocore's SigV4 signature of this request, over
        the headers it names, with the key's secret and token."""
        names = re.search(r"SignedHeaders=([^,\s]+)", auth).group(1).split(";")
        headers = {n: self.headers[n] for n in names if n != "host" and n in self.headers}
        url = f"http://{self.headers['Host']}{self.path}"
        req = AWSRequest(method=self.command, url=url, data=body, headers=headers)
        req.context["timestamp"] = self.headers.get("X-Amz-Date", "")
        signer = SigV4Auth(Credentials(key, "s-" + key, "t-" + key), service, region)
        want = signer.signature(signer.string_to_sign(req, signer.canonical_request(req)), req)
        got = re.search(r"Signature=([0-9a-f]+)", auth)
        return got is not None and hmac.compare_digest(want, got.group(1))

    def forward(self, body, region):
        headers = {k: v for k, v in self.headers.items() if k.lower() not in DROPPED}
        path = self.path
        if self.service == "s3":
            # Sent as signed: query values encoded as SigV4 encodes them
            # (OpenDAL leaves a listing prefix's '/' as it is).
            parts = urllib.parse.urlsplit(path)
            query = urllib.parse.urlencode(
                urllib.parse.parse_qsl(parts.query, keep_blank_values=True),
                quote_via=urllib.parse.quote,
                safe="-_.~",
            )
            path = parts.path + ("?" + query if parts.query else "")
        url = self.target + path
        if self.service == "s3":
            req = AWSRequest(method=self.command, url=url, data=body, headers=headers)
            creds = Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
            S3SigV4Auth(creds, "s3", region).add_auth(req)
            headers = dict(req.headers.items())
        elif self.service == "rest" and REST_SIGV4:
            req = AWSRequest(method=self.command, url=url, data=body, headers=headers)
            creds = Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
            SigV4Auth(creds, REST_SIGV4, region).add_auth(req)
            headers = dict(req.headers.items())
        else:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "transfer-encoding", "content-length")}
        u = urllib.parse.urlsplit(self.target)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        conn.request(self.command, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        loads = self.command == "GET" or urllib.parse.urlsplit(path).path.endswith("/tables")
        asked = self.headers.get("X-Iceberg-Access-Delegation") == "vended-credentials"
        if self.service == "rest" and resp.status == 200 and loads and asked:
            data = vend(data)
        if self.service == "rest" and resp.status == 200 and TOKEN_LIFE and path.split("?")[0].endswith("/oauth/tokens"):
            data = issue(data)
        self.send_response(resp.status)
        length_sent = False
        for k, v in resp.getheaders():
            lk = k.lower()
            if lk in ("transfer-encoding", "connection"):
                continue
            if lk == "content-length":
                if self.command != "HEAD":
                    v = str(len(data))
                length_sent = True
            self.send_header(k, v)
        if not length_sent:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_any


def vend(data):
    """A table load's (or creation's) answer with a new key in its `config`."""
    try:
        answer = json.loads(data)
    except ValueError:
        return data
    if not isinstance(answer, dict) or "metadata" not in answer:
        return data
    key = f"VEND{time.time_ns()}"
    expires = time.time() + VENDED_LIFE
    with LOG_LOCK, open(LEDGER, "a") as f:
        f.write(json.dumps({"key": key, "expires": expires}) + "\n")
    config = answer.setdefault("config", {})
    config.update({
        "s3.endpoint": f"http://127.0.0.1:{PORTS['s3']}",
        "s3.path-style-access": "true",
        "s3.region": "us-east-1",
    })
    keys = {
        "s3.access-key-id": key,
        "s3.secret-access-key": "s-" + key,
        "s3.session-token": "t-" + key,
        "s3.session-token-expires-at-ms": str(int(expires * 1000)),
    }
    if VEND_AS == "storage-credentials":
        # The REST spec's place (Iceberg 1.7+, Lakekeeper): the keys only
        # there, the most specific prefix the right one; a key for a wider
        # prefix that no request may use.
        decoy = {**keys, "s3.access-key-id": "DECOY" + key}
        answer["storage-credentials"] = [
            {"prefix": "s3://", "config": decoy},
            {"prefix": "s3://warehouse/", "config": keys},
        ]
    else:
        config.update(keys)
    log({"t": time.time(), "service": "rest", "vended": key, "expires": expires, "ok": True})
    return json.dumps(answer).encode()


def issue(data):
    """A token endpoint's answer, its token recorded and its life stated."""
    answer = json.loads(data)
    with LOG_LOCK:
        TOKENS[answer["access_token"]] = time.time()
        n = len(TOKENS)
    answer["expires_in"] = TOKEN_LIFE
    log({"t": time.time(), "service": "rest", "token": n, "ok": True})
    return json.dumps(answer).encode()


def serve(service, target):
    handler = type(service, (Front,), {"service": service, "target": target.rstrip("/")})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


if __name__ == "__main__":
    PORTS["s3"] = serve("s3", S3_URL)
    ports = [PORTS["s3"], serve("glue", GLUE_URL)]
    if REST_URL:
        ports.append(serve("rest", REST_URL))
    print(*ports, flush=True)
    threading.Event().wait()
