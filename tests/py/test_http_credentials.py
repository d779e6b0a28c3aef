"""HTTP routes with real service credentials from a real OAuth 2.0 server.

The authorization server is node-oidc-provider (tests/oidc/server.mjs, installed from npm by
scripts/test): `client_credentials` as it ships, and RFC 8693 token exchange registered
through its grant-type API, verifying the caller's token against `claimgate dev`'s issuer.
The upstream is a recorder that keeps every Authorization header it is sent; the tests verify
the tokens it got against the provider's published keys.
"""

import http.server
import json
import os
import pathlib
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest

from conftest import Dev
from test_route_credentials import Serve, free_port

OIDC_DIR = pathlib.Path(__file__).resolve().parents[1] / "oidc"
RESOURCE = "https://features.example"

POLICY = """
[[roles]]
name = "trainer"
members = [ { claim = "groups", contains = "ml-engineers" } ]
allow = [ { actions = ["http:POST", "http:GET"], resources = ["http://features/*"] } ]
deny = [ { actions = ["http:*"], resources = ["http://features/admin/*"] } ]
"""


class AuthServer:
    """node-oidc-provider on a free port."""

    def __init__(self, subject_issuer, ttl):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PORT=str(self.port), TOKEN_TTL=str(ttl), SUBJECT_ISSUER=subject_issuer)
        self.proc = subprocess.Popen(
            ["node", str(OIDC_DIR / "server.mjs")], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        line = self.proc.stdout.readline()
        assert line.startswith("ready "), line
        self.jwks = jwt.PyJWKClient(self.url + "/jwks")

    def token_requests(self):
        with urllib.request.urlopen(self.url + "/test/token-requests") as r:
            return json.loads(r.read())

    def verify(self, token):
        key = self.jwks.get_signing_key_from_jwt(token)
        return jwt.decode(token, key.key, algorithms=["RS256"], audience=RESOURCE, issuer=self.url)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Recorder:
    """An upstream that answers 200 and keeps each request's path and Authorization."""

    def __init__(self):
        self.seen = []
        seen = self.seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                seen.append((self.path, self.headers.get("Authorization")))
                body = b'{"ok": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def tokens(self):
        return [a.split(" ", 1)[1] for _, a in self.seen if a]

    def stop(self):
        self.server.shutdown()


def issuer_of(dev):
    return next(l.split()[2] for l in dev.lines if l.strip().startswith("dev IdP"))


def serve(tmp, dev, upstream, credentials):
    (tmp / "policies").mkdir(exist_ok=True)
    (tmp / "policies" / "features.toml").write_text(POLICY)
    (tmp / "client.secret").write_text("claimgate-client-secret\n")
    config = f"""
[server]
listen = "{{listen}}"
shutdown_grace = "2s"

[[issuers]]
issuer = "{issuer_of(dev)}"
audiences = ["claimgate"]

[policies]
dir = "policies"

[audit]
path = "audit.log"

[[routes]]
name = "features"
kind = "http"
path_prefix = "/features/"
upstream = "{upstream.url}"
credentials = {credentials}
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["CLAIMGATE_LOG"] = "info"
    return Serve(tmp, config, env)


def post(cg, path, token):
    req = urllib.request.Request(cg.url + path, data=b"{}", method="POST", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    d = Dev(tmp_path_factory.mktemp("idp"), tls=False)
    yield d
    d.stop()


@pytest.fixture
def upstream():
    r = Recorder()
    yield r
    r.stop()


def test_client_credentials_one_fetch_under_concurrency_refreshed_before_expiry(dev, upstream, tmp_path):
    auth = AuthServer(issuer_of(dev), ttl=4)
    creds = (
        f'{{ kind = "oauth2_client_credentials", token_url = "{auth.url}/token", client_id = "claimgate", '
        f'client_secret = "file:client.secret", scopes = ["features:read"], resource = "{RESOURCE}" }}'
    )
    cg = serve(tmp_path, dev, upstream, creds)
    try:
        alice = dev.mint("alice", "groups=ml-engineers")
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda _: post(cg, "/features/get-online-features", alice), range(16)))
        assert [s for s, _ in answers] == [200] * 16
        assert auth.token_requests() == {"client_credentials": 1}
        tokens = set(upstream.tokens())
        assert len(tokens) == 1
        claims = auth.verify(tokens.pop())
        assert claims["sub"] == "claimgate" and claims["client_id"] == "claimgate" and claims["scope"] == "features:read"
        # the caller's own token never reaches the feature store
        assert alice not in upstream.tokens()
        # a 4 s token is replaced half-way through its life, before it lapses
        time.sleep(2.5)
        assert post(cg, "/features/get-online-features", alice)[0] == 200
        assert auth.token_requests() == {"client_credentials": 2}
        # policy first: a denied path costs no token and reaches nothing
        before = len(upstream.seen)
        status, body = post(cg, "/features/admin/reset", alice)
        assert status == 403 and json.loads(body)["code"] == "AccessDenied"
        assert len(upstream.seen) == before
    finally:
        cg.stop()
        auth.stop()


def test_token_exchange_gives_the_upstream_a_token_naming_the_caller(dev, upstream, tmp_path):
    auth = AuthServer(issuer_of(dev), ttl=60)
    creds = (
        f'{{ kind = "token_exchange", token_url = "{auth.url}/token", client_id = "claimgate", '
        f'client_secret = "file:client.secret", resource = "{RESOURCE}" }}'
    )
    cg = serve(tmp_path, dev, upstream, creds)
    try:
        alice = dev.mint("alice", "groups=ml-engineers")
        bob = dev.mint("bob", "groups=ml-engineers")
        for token in (alice, alice, bob, alice, bob):
            assert post(cg, "/features/get-online-features", token)[0] == 200
        # one exchange per caller token, reused while it lives
        assert auth.token_requests() == {"urn:ietf:params:oauth:grant-type:token-exchange": 2}
        subjects = [auth.verify(t)["sub"] for t in upstream.tokens()]
        assert subjects == ["alice", "alice", "bob", "alice", "bob"]
        claims = auth.verify(upstream.tokens()[0])
        assert claims["act"] == {"sub": "claimgate"} and claims["subject_issuer"] == issuer_of(dev)
        assert alice not in upstream.tokens() and bob not in upstream.tokens()
        # a denied call of a new caller costs no exchange and reaches nothing
        carol = dev.mint("carol", "groups=ml-engineers")
        seen = len(upstream.seen)
        assert post(cg, "/features/admin/reset", carol)[0] == 403
        assert auth.token_requests() == {"urn:ietf:params:oauth:grant-type:token-exchange": 2}
        assert len(upstream.seen) == seen
        # an exchanged token is not kept past the caller's own: a 4 s token is exchanged again
        # once it has lapsed (the IdP, checking `exp` strictly, then refuses it: a 503)
        dave = dev.mint("dave", "groups=ml-engineers", ttl="4s")
        assert post(cg, "/features/get-online-features", dave)[0] == 200
        assert post(cg, "/features/get-online-features", dave)[0] == 200
        assert auth.token_requests()["urn:ietf:params:oauth:grant-type:token-exchange"] == 3
        time.sleep(5)
        assert post(cg, "/features/get-online-features", dave)[0] == 503
        assert auth.token_requests()["urn:ietf:params:oauth:grant-type:token-exchange"] == 4
    finally:
        cg.stop()
        auth.stop()


def test_a_refusing_token_endpoint_is_a_503_problem_and_nothing_reaches_the_upstream(dev, upstream, tmp_path):
    auth = AuthServer(issuer_of(dev), ttl=60)
    creds = (
        f'{{ kind = "oauth2_client_credentials", token_url = "{auth.url}/token", client_id = "claimgate", '
        f'client_secret = "not-the-secret", resource = "{RESOURCE}" }}'
    )
    cg = serve(tmp_path, dev, upstream, creds)
    try:
        status, body = post(cg, "/features/get-online-features", dev.mint("alice", "groups=ml-engineers"))
        assert status == 503, body
        problem = json.loads(body)
        assert problem["code"] == "ServiceUnavailable"
        assert "not-the-secret" not in body.decode()
        assert upstream.seen == []
        record = [r for r in cg.audit() if r.get("path") == "/features/get-online-features"][-1]
        assert record["reason"] == "upstream_credentials_unavailable"
        log = (tmp_path / "claimgate.log").read_text()
        assert "invalid_client" in log and "not-the-secret" not in log
    finally:
        cg.stop()
        auth.stop()
