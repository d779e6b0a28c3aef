"""Scale-out: three `claimgate serve` replicas behind a round-robin, one IdP, one S3 store.

What a deployment with several replicas relies on, each shown with real clients (boto3):

- STS sessions issued by one replica are accepted by every other (the session is sealed with
  the shared keyring; no state is shared between the processes);
- a sealing-key rotation rolled across the replicas one at a time fails no request;
- a policy change rolled out replica by replica decides every request by either the old or
  the new policy, never an error;
- a revocation written to the shared list — updated the way kubelet updates a ConfigMap
  volume, by swapping the `..data` symlink — is refused on every replica within seconds.

The set-up, shared by the tests of this module (they run in file order):

    boto3 ──► round-robin (nginx when installed, else a small Python balancer)
                 ├─► replica r0 ─┐   each: `claimgate serve` with its own config, listen and
                 ├─► replica r1 ─┼─► admin ports, audit file, and policies "volume"
                 └─► replica r2 ─┘
                        │ (re-signed)
                        ▼
                 upstream recorder (a pass-through that logs every request) ─► dev S3 store

The IdP (for tokens) and the S3 store are those of one `claimgate dev`; its own proxy is not
used. The round-robin balances every request (no keep-alive upstream) and passes `Host`
through, so SigV4 signatures made for its address hold at every replica. Evidence for
docs/scale-out.md.
"""

import base64
import hashlib
import http.client
import json
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import botocore
import botocore.config
import botocore.exceptions
import pytest

from conftest import BIN, Dev

ROLE = "arn:aws:iam::000000000000:role/trainer"
SESSION = 4  # default_session, seconds: what an SDK gets when it asks for no DurationSeconds
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
if os.environ.get("SCALE_OUT_BALANCER") == "python":  # the fallback, on a machine with nginx
    NGINX = None

# v1 and v2 of the role policy, rolled out in test_policy_rollout. v2 grants the curated
# data and takes one training shard away.
POLICY_V1 = """
[[roles]]
name = "trainer"
members = [ { claim = "groups", contains = "ml-engineers" } ]
allow = [
  { actions = ["s3:GetObject", "s3:ListBucket"], resources = ["s3://datasets/imagenet/*"] },
  { actions = ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"], resources = ["s3://checkpoints/${sub}/*"] },
]
deny = [ { actions = ["s3:*"], resources = ["s3://datasets/pii/*"] } ]
"""
POLICY_V2 = """
[[roles]]
name = "trainer"
members = [ { claim = "groups", contains = "ml-engineers" } ]
allow = [
  { actions = ["s3:GetObject", "s3:ListBucket"], resources = ["s3://datasets/imagenet/*"] },
  { actions = ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"], resources = ["s3://checkpoints/${sub}/*"] },
  { actions = ["s3:GetObject"], resources = ["s3://datasets/curated/*"] },
]
deny = [
  { actions = ["s3:*"], resources = ["s3://datasets/pii/*"] },
  { actions = ["s3:*"], resources = ["s3://datasets/imagenet/train/0002.tar"] },
]
"""
REVOKED_NOTHING = """
[[revoked]]
subject = "someone-who-left"
reason = "offboarded"
"""


# ---- helpers --------------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, check, seconds=10, every=0.05):
    deadline = time.time() + seconds
    while True:
        got = check()
        if got:
            return got
        if time.time() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        time.sleep(every)


def new_key():
    return base64.b64encode(os.urandom(32)).decode()


def key_id(b64key):
    """The 4-byte id claimgate puts in front of a sealed session (SHA-256 of the raw key)."""
    return hashlib.sha256(base64.b64decode(b64key)).digest()[:4]


def sealed_by(session_token):
    """Which key sealed a session token: `CGS1.` + base64url(key id ‖ nonce ‖ sealed)."""
    assert session_token.startswith("CGS1."), session_token[:10]
    body = session_token[len("CGS1."):]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))[:4]


def error_code(e):
    return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]


NO_RETRIES = botocore.config.Config(
    retries={"max_attempts": 1, "mode": "standard"}, s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=30
)


_clients = {}
_clients_lock = threading.Lock()
_boto = None


def make_client(service, **kwargs):
    """Clients from one boto3 session (it loads the service models once); made under a lock,
    since a session is not thread-safe (its clients are)."""
    global _boto
    with _clients_lock:
        if _boto is None:
            _boto = boto3.session.Session()
        return _boto.client(service, **kwargs)


def sts_client(url):
    """An unsigned STS client for this URL, made once."""
    if url not in _clients:
        _clients[url] = make_client(
            "sts",
            endpoint_url=url,
            region_name="us-east-1",
            config=NO_RETRIES.merge(botocore.config.Config(signature_version=botocore.UNSIGNED)),
        )
    return _clients[url]


def assume(url, token, name="scale-out", duration=None):
    extra = {"DurationSeconds": duration} if duration else {}
    out = sts_client(url).assume_role_with_web_identity(
        RoleArn=ROLE, RoleSessionName=name, WebIdentityToken=token, **extra
    )
    return out["Credentials"]


def s3(url, creds):
    """An S3 client for these session credentials at this URL (made once: clients are slow
    to make and safe to share between threads)."""
    key = (url, creds["AccessKeyId"], creds["SessionToken"])
    if key not in _clients:
        _clients[key] = _s3(url, creds)
    return _clients[key]


def _s3(url, creds):
    return make_client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        config=NO_RETRIES,
    )


def outcome(call):
    """200, or the (code, status) a refusal came back with."""
    try:
        call()
        return 200
    except botocore.exceptions.ClientError as e:
        return error_code(e)


# ---- the round-robin and the upstream recorder ------------------------------------------------

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "upgrade", "expect"}


class Balancer:
    """A per-request round-robin HTTP/1.1 proxy: each request goes to the next backend over a
    new connection, with its headers (Host included) as they came; the answer is passed back
    whole. With one backend it is a recorder: `log` holds (method, path, backend, status)."""

    def __init__(self, backends):
        self.backends = list(backends)
        self.lock = threading.Lock()
        self.turn = 0
        self.log = []
        balancer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def body(self):
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    raw = b""
                    while True:
                        line = self.rfile.readline()
                        raw += line
                        size = int(line.split(b";")[0].strip(), 16)
                        if size == 0:
                            while True:
                                trailer = self.rfile.readline()
                                raw += trailer
                                if trailer in (b"\r\n", b"\n", b""):
                                    return raw
                        raw += self.rfile.read(size + 2)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def relay(self):
                body = self.body()
                with balancer.lock:
                    index = balancer.turn % len(balancer.backends)
                    balancer.turn += 1
                host, port = balancer.backends[index]
                try:
                    conn = http.client.HTTPConnection(host, port, timeout=60)
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for k, v in self.headers.items():
                        if k.lower() not in HOP_BY_HOP:
                            conn.putheader(k, v)
                    conn.putheader("Connection", "close")
                    conn.endheaders(body)
                    resp = conn.getresponse()
                    data = resp.read()
                    headers = resp.getheaders()
                    status, reason = resp.status, resp.reason
                    conn.close()
                except OSError as e:
                    status, reason, headers, data = 502, "Bad Gateway", [], f"balancer: {e}".encode()
                with balancer.lock:
                    balancer.log.append((self.command, self.path, index, status))
                self.send_response_only(status, reason)
                keep_length = self.command == "HEAD" or status in (204, 304)
                for k, v in headers:
                    lk = k.lower()
                    if lk in HOP_BY_HOP or lk == "transfer-encoding" or (lk == "content-length" and not keep_length):
                        continue
                    self.send_header(k, v)
                if not keep_length:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not keep_length:
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = relay

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.kind = "python"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, method, path_part, status=None):
        with self.lock:
            return sum(1 for m, p, _, s in self.log if m == method and path_part in p and (status is None or s == status))

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class NginxBalancer:
    """nginx in the foreground with its own config: round-robin over the replicas, every
    request on a new upstream connection, nothing buffered, nothing retried elsewhere."""

    def __init__(self, backends):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="claimgate-scale-nginx-"))
        os.chmod(self.dir, 0o755)  # workers run unprivileged when nginx is started as root
        (self.dir / "tmp").mkdir()
        os.chmod(self.dir / "tmp", 0o777)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.kind = "nginx"
        servers = "".join(f"    server {h}:{p};\n" for h, p in backends)
        tmp = self.dir / "tmp"
        conf = self.dir / "nginx.conf"
        conf.write_text(f"""worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log {self.dir}/access.log;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  client_max_body_size 0;
  upstream replicas {{
{servers}  }}
  server {{
    listen 127.0.0.1:{self.port};
    location / {{
      proxy_pass http://replicas;
      proxy_set_header Host $http_host;
      proxy_http_version 1.1;
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_next_upstream off;
    }}
  }}
}}
""")
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-c", str(conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "stderr.log", "w"),
        )

        def listening():
            if self.proc.poll() is not None:
                raise RuntimeError("nginx did not start:\n" + (self.dir / "stderr.log").read_text())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_until("nginx to listen", listening)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- a ConfigMap volume, as kubelet writes it --------------------------------------------------


class ConfigMapVolume:
    """A directory laid out by kubelet's AtomicWriter: the files live in a timestamped
    directory (`..2026_12_07_10_00_00.123456`), `..data` is a symlink to it, and each file is
    a symlink through `..data` (`revoked.toml -> ..data/revoked.toml`). An update writes a new
    timestamped directory, points a new `..data_tmp` symlink at it and renames that over
    `..data` (atomic), then removes the old directory. The file symlinks themselves never
    change: not their target, not their mtime."""

    def __init__(self, path, files):
        self.path = pathlib.Path(path)
        self.path.mkdir(parents=True)
        self.update(files)

    def update(self, files):
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S", time.gmtime()) + f".{random.randrange(10**9)}"
        new = self.path / stamp
        new.mkdir()
        for name, text in files.items():
            (new / name).write_text(text)
        data = self.path / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        os.symlink(stamp, self.path / "..data_tmp")
        os.rename(self.path / "..data_tmp", data)  # the moment the new content is in place
        swapped = time.monotonic()
        for name in files:
            if not (self.path / name).is_symlink():
                os.symlink(f"..data/{name}", self.path / name)
        if old:
            shutil.rmtree(self.path / old)
        return swapped


# ---- the replicas ---------------------------------------------------------------------------


class Replica:
    """One `claimgate serve` with its own config file, ports, audit file and policies volume."""

    def __init__(self, name, base, shared):
        self.name = name
        self.dir = base / name
        self.dir.mkdir()
        self.shared = shared
        self.port, self.admin_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.policies = ConfigMapVolume(self.dir / "policies", {"ml.toml": POLICY_V1})
        self.keys = ["a"]
        self.write_config()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["CLAIMGATE_LOG"] = "info"
        self.log = open(self.dir / "claimgate.log", "w")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--config", str(self.dir / "claimgate.toml")],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def write_config(self):
        s = self.shared
        keys = ", ".join(f'"file:{s["keys"] / ("sealing-" + k + ".key")}"' for k in self.keys)
        text = f"""
[server]
listen = "127.0.0.1:{self.port}"
shutdown_grace = "2s"

[admin]
listen = "127.0.0.1:{self.admin_port}"

[[issuers]]
issuer = "{s['issuer']}"
audiences = ["claimgate"]
min_refetch = "1s"

[sts]
enabled = true
sealing_keys = [{keys}]   # newest first: the first seals, every one opens
default_session = "{SESSION}s"
max_session = "1h"

[revocations]
file = "{s['revocations'] / 'revoked.toml'}"

[policies]
dir = "policies"

[audit]
path = "audit.log"

[[routes]]
name = "lake"
kind = "s3"
upstream = "{s['upstream']}"
region = "us-east-1"
credentials = {{ kind = "static", access_key_id = "claimgate-dev-store", secret_access_key = "file:{s['store_secret']}" }}
upload_id_key = "file:{s['keys'] / 'upload-id.key'}"
"""
        tmp = self.dir / "claimgate.toml.tmp"
        tmp.write_text(text)
        os.rename(tmp, self.dir / "claimgate.toml")

    def metric(self, name):
        with urllib.request.urlopen(self.admin + "/metrics", timeout=5) as r:
            text = r.read().decode()
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(m.group(1)) if m else None

    def generation(self):
        return int(self.metric("claimgate_config_generation"))

    def ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited:\n" + (self.dir / "claimgate.log").read_text())
        try:
            with urllib.request.urlopen(self.admin + "/readyz", timeout=1) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def reloaded(self, change):
        """Makes a change to this replica's config set and waits until it is in force;
        returns how long that took (seconds)."""
        before = self.generation()
        start = time.monotonic()
        change()
        wait_until(f"{self.name} to reload", lambda: self.generation() > before, seconds=10, every=0.02)
        took = time.monotonic() - start
        assert self.metric("claimgate_config_last_reload_successful") == 1.0, self.name
        return took

    def set_keys(self, keys):
        def change():
            self.keys = keys
            self.write_config()

        return self.reloaded(change)

    def set_policy(self, text):
        return self.reloaded(lambda: self.policies.update({"ml.toml": text}))

    def audit(self):
        path = self.dir / "audit.log"
        return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        finally:
            self.log.close()


class Cluster:
    def __init__(self, tmp):
        self.dev = Dev(tmp / "idp", tls=False)
        self.issuer = next(l.split()[2] for l in self.dev.lines if l.strip().startswith("dev IdP"))
        dev_config = (self.dev.dir / "claimgate.toml").read_text()
        store = re.search(r'upstream = "http://([\d.]+):(\d+)"', dev_config)
        self.data = self.dev.dir / "data"
        self.recorder = Balancer([(store.group(1), int(store.group(2)))])
        keys = tmp / "keys"
        keys.mkdir()
        self.keys = {"a": new_key(), "b": new_key()}
        for k, v in self.keys.items():
            (keys / f"sealing-{k}.key").write_text(v)
        (keys / "upload-id.key").write_text(new_key())
        self.revocations = ConfigMapVolume(tmp / "revocations", {"revoked.toml": REVOKED_NOTHING})
        shared = {
            "issuer": self.issuer,
            "upstream": self.recorder.url,
            "store_secret": self.dev.dir / "store.secret",
            "keys": keys,
            "revocations": self.revocations.path,
        }
        self.replicas = []
        self.lb = None
        try:
            self.replicas = [Replica(f"r{i}", tmp, shared) for i in range(3)]
            for r in self.replicas:
                wait_until(f"{r.name} to be ready", r.ready, seconds=30)
            backends = [("127.0.0.1", r.port) for r in self.replicas]
            self.lb = NginxBalancer(backends) if NGINX else Balancer(backends)
        except BaseException:
            self.stop()
            raise

    def token(self, sub, ttl="1h"):
        return self.dev.mint(sub, "groups=ml-engineers", ttl=ttl)

    def put_object(self, bucket, key, body):
        """Straight into the store's folder, past every replica."""
        path = self.data / bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)

    def audit_of(self, replica, pred, at_least=1, seconds=5):
        """The records of one replica matching `pred`, once there are `at_least` of them
        (records are written when the answer has gone out)."""
        found = []

        def enough():
            found[:] = [r for r in replica.audit() if pred(r)]
            return len(found) >= at_least

        wait_until(f"{at_least} matching audit record(s) in {replica.name}", enough, seconds=seconds)
        return found

    def stop(self):
        problems = []
        if self.lb:
            self.lb.stop()
        for r in self.replicas:
            r.stop()
            if r.proc.returncode != 0:
                problems.append(f"{r.name} exited {r.proc.returncode}")
        self.recorder.stop()
        self.dev.stop()
        assert not problems, problems


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("scale-out"))
    yield c
    c.stop()


def sub_of(r):
    return r.get("identity", {}).get("sub")


# ---- (a) sessions issued by one replica work on every other ----------------------------------


def test_sessions_issued_by_one_replica_work_on_every_other(cluster):
    c = cluster
    c.put_object("datasets", "imagenet/scale/cross.bin", b"shared shard\n")
    token = c.token("carol")
    # one session from each replica (asked directly), and three through the round-robin
    sessions = [assume(r.url, token, duration=900) for r in c.replicas]
    sessions += [assume(c.lb.url, token, duration=900) for _ in range(3)]
    assert len({s["AccessKeyId"] for s in sessions}) == 6
    assert {sealed_by(s["SessionToken"]) for s in sessions} == {key_id(c.keys["a"])}
    # each replica's audit names the session it issued, and the identity behind it
    for r, s in zip(c.replicas, sessions):
        issued = c.audit_of(
            r,
            lambda x: x.get("operation") == "AssumeRoleWithWebIdentity"
            and x.get("identity", {}).get("session") == s["AccessKeyId"],
        )
        assert issued[0]["decision"] == "allow" and issued[0]["identity"]["sub"] == "carol"
    # the round-robin spread the three STS calls over the replicas
    lb_issued = {s["AccessKeyId"] for s in sessions[3:]}
    issuers = {}

    def all_recorded():
        for r in c.replicas:
            for x in r.audit():
                if x.get("operation") == "AssumeRoleWithWebIdentity" and x.get("identity", {}).get("session") in lb_issued:
                    issuers[x["identity"]["session"]] = r.name
        return len(issuers) == 3

    wait_until("the round-robin's sessions in the audit files", all_recorded, seconds=5)
    assert sorted(issuers.values()) == ["r0", "r1", "r2"], issuers

    # every session on every replica: read, write, and read back the write on the next one
    for i, s in enumerate(sessions):
        for j, r in enumerate(c.replicas):
            body = s3(r.url, s).get_object(Bucket="datasets", Key="imagenet/scale/cross.bin")["Body"].read()
            assert body == b"shared shard\n", (i, r.name)
            key = f"carol/cross/s{i}-{r.name}"
            s3(r.url, s).put_object(Bucket="checkpoints", Key=key, Body=key.encode())
            nxt = c.replicas[(j + 1) % 3]
            assert s3(nxt.url, s).get_object(Bucket="checkpoints", Key=key)["Body"].read() == key.encode()
    for r in c.replicas:
        seen = {
            x["identity"]["session"]
            for x in c.audit_of(
                r,
                lambda x: x.get("path") == "/datasets/imagenet/scale/cross.bin" and x.get("status") == 200,
                at_least=6,
            )
        }
        assert seen == {s["AccessKeyId"] for s in sessions}, r.name
        assert all(
            x["identity"]["auth_method"] == "sts_session" and x["identity"]["sub"] == "carol"
            for x in r.audit()
            if x.get("path") == "/datasets/imagenet/scale/cross.bin"
        )

    # a multipart upload begun on one replica, its parts on the others, completed on the first
    # (the upload id is bound to bucket and key with the shared upload_id_key)
    s = sessions[0]
    part1, part2 = os.urandom(5 << 20), b"tail of the checkpoint"
    r0, r1, r2 = (s3(r.url, s) for r in c.replicas)
    up = r0.create_multipart_upload(Bucket="checkpoints", Key="carol/cross/multipart.bin")["UploadId"]
    e1 = r1.upload_part(Bucket="checkpoints", Key="carol/cross/multipart.bin", UploadId=up, PartNumber=1, Body=part1)
    e2 = r2.upload_part(Bucket="checkpoints", Key="carol/cross/multipart.bin", UploadId=up, PartNumber=2, Body=part2)
    r0.complete_multipart_upload(
        Bucket="checkpoints",
        Key="carol/cross/multipart.bin",
        UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1["ETag"]}, {"PartNumber": 2, "ETag": e2["ETag"]}]},
    )
    got = s3(c.lb.url, s).get_object(Bucket="checkpoints", Key="carol/cross/multipart.bin")["Body"].read()
    assert got == part1 + part2

    # verification is real: a token whose key id is not in the ring is refused everywhere
    forged = dict(s)
    raw = bytearray(base64.urlsafe_b64decode(s["SessionToken"][5:] + "=" * (-len(s["SessionToken"][5:]) % 4)))
    raw[0] ^= 0xFF
    forged["SessionToken"] = "CGS1." + base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    before = c.recorder.count("GET", "/imagenet/scale/cross.bin")
    for r in c.replicas:
        code, status = outcome(lambda: s3(r.url, forged).get_object(Bucket="datasets", Key="imagenet/scale/cross.bin"))
        assert (code, status) == ("InvalidToken", 400), r.name
    assert c.recorder.count("GET", "/imagenet/scale/cross.bin") == before, "a refused request reached the store"


# ---- (b) sealing-key rotation, rolled replica by replica ----------------------------------


class Loop(threading.Thread):
    """Calls through the round-robin until stopped, counting every failed call."""

    def __init__(self, body):
        super().__init__(daemon=True)
        self.body = body
        self.stopping = threading.Event()
        self.calls = 0
        self.failures = []

    def run(self):
        while not self.stopping.is_set():
            try:
                self.body(self)
            except Exception as e:  # noqa: BLE001 - every failure is counted and shown
                self.failures.append(repr(e))
            self.calls += 1

    def stop(self):
        self.stopping.set()
        self.join(timeout=30)


def test_sealing_key_rotation_rolled_across_replicas_fails_no_request(cluster, monkeypatch):
    c = cluster
    c.put_object("datasets", "imagenet/scale/rotation.bin", b"rotation shard\n")
    A, B = key_id(c.keys["a"]), key_id(c.keys["b"])
    token_file = c.dev.dir / "rotation.jwt"
    token_file.write_text(c.token("rita"))
    token = token_file.read_text()
    # a long session sealed with the old key, held across the whole rotation
    held = assume(c.lb.url, token, duration=900)
    assert sealed_by(held["SessionToken"]) == A

    # a hand-driven loop: a new session from the round-robin each time (so from one replica)
    # used at once through the round-robin (so mostly on another), and the previous session
    # used again (issued before whatever reload happened since)
    sealed = []  # (time, key id) of every session the loop was issued

    def explicit(loop):
        s = assume(c.lb.url, token)
        sealed.append((time.monotonic(), sealed_by(s["SessionToken"])))
        client = _s3(c.lb.url, s)  # not kept: a new session each round
        got = client.get_object(Bucket="datasets", Key="imagenet/scale/rotation.bin")["Body"].read()
        assert got == b"rotation shard\n"
        if getattr(loop, "previous", None):
            loop.previous.head_object(Bucket="datasets", Key="imagenet/scale/rotation.bin")
        loop.previous = client

    # an unmodified SDK with only the web-identity variables: botocore re-assumes the role
    # before every call (the 4 s sessions are always inside its refresh window)
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    for k, v in {
        "AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file),
        "AWS_ROLE_ARN": ROLE,
        "AWS_ENDPOINT_URL_STS": c.lb.url,
        "AWS_ENDPOINT_URL_S3": c.lb.url,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1",  # a failure must show, not be retried away
        "AWS_RETRY_MODE": "standard",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(k, v)
    sdk_client = boto3.session.Session().client("s3", config=botocore.config.Config(s3={"addressing_style": "path"}))

    def sdk(loop):
        sdk_client.get_object(Bucket="datasets", Key="imagenet/scale/rotation.bin")["Body"].read()

    loops = [Loop(explicit), Loop(sdk)]
    for loop in loops:
        loop.start()
    try:
        time.sleep(1)
        # 1. the new key, as a second (opening, not sealing) key, on every replica
        for r in c.replicas:
            r.set_keys(["a", "b"])
            time.sleep(0.3)
        assert {k for _, k in sealed} == {A}, "a replica sealed with a key not yet everywhere"
        # 2. promoted to first, replica by replica: that replica now seals with it
        for i, r in enumerate(c.replicas):
            r.set_keys(["b", "a"])
            assert sealed_by(assume(r.url, token)["SessionToken"]) == B, r.name
            for other in c.replicas[i + 1 :]:
                assert sealed_by(assume(other.url, token)["SessionToken"]) == A, other.name
            time.sleep(0.5)
        promoted = time.monotonic()
        # every replica opens what any of them sealed, with either key
        fresh = assume(c.lb.url, token, duration=900)
        assert sealed_by(fresh["SessionToken"]) == B
        for r in c.replicas:
            for s in (fresh, held):
                assert s3(r.url, s).get_object(Bucket="datasets", Key="imagenet/scale/rotation.bin")["Body"].read()
        # 3. the old key goes once every session sealed with it has expired or been re-issued:
        # the SDK sessions last SESSION seconds; the held one is the exception, on purpose
        time.sleep(SESSION + 0.5)
        for r in c.replicas:
            r.set_keys(["b"])
            time.sleep(0.3)
        time.sleep(1)
    finally:
        for loop in loops:
            loop.stop()

    print(f"\nkey rotation: {loops[0].calls} hand-driven rounds (3 requests each), {loops[1].calls} SDK calls "
          + f"(each after its own AssumeRoleWithWebIdentity), failed: {len(loops[0].failures) + len(loops[1].failures)}")
    for loop in loops:
        assert loop.failures == [], f"{len(loop.failures)} of {loop.calls} failed: {loop.failures[:3]}"
        assert loop.calls >= 20, loop.calls
    assert {k for _, k in sealed} == {A, B}
    assert all(k == B for t, k in sealed if t > promoted), "a session was sealed with the old key after promotion"
    # after the rotation: new-key sessions open on every replica …
    for r in c.replicas:
        assert s3(r.url, fresh).get_object(Bucket="datasets", Key="imagenet/scale/rotation.bin")["Body"].read()
    # … and a session still sealed with the removed key is refused on every one, on record,
    # without reaching the store: why step 3 waits for sessions to expire
    before = c.recorder.count("GET", "/imagenet/scale/rotation.bin")
    for r in c.replicas:
        code, status = outcome(lambda: s3(r.url, held).get_object(Bucket="datasets", Key="imagenet/scale/rotation.bin"))
        assert (code, status) == ("InvalidToken", 400), r.name
        refused = c.audit_of(
            r, lambda x: x.get("path") == "/datasets/imagenet/scale/rotation.bin" and x.get("status", 0) >= 400
        )
        assert {x["reason"] for x in refused} == {"invalid_session_token"}, refused
    assert c.recorder.count("GET", "/imagenet/scale/rotation.bin") == before

    # every replica served the loops, and none of its records for them is a failure
    for r in c.replicas:
        mine = [x for x in r.audit() if sub_of(x) == "rita"]
        ops = {x.get("operation") for x in mine}
        assert {"AssumeRoleWithWebIdentity", "GetObject", "HeadObject"} <= ops, (r.name, ops)
        failed = [x for x in mine if x.get("status", 0) >= 400 and x.get("identity", {}).get("session") != held["AccessKeyId"]]
        assert failed == [], (r.name, failed[:3])


# ---- (c) a policy change rolled out replica by replica --------------------------------------


def test_policy_rollout_replica_by_replica(cluster):
    c = cluster
    s = assume(c.lb.url, c.token("polly"), duration=900)
    CURATED, SHARD = ("curated/sales.csv", "imagenet/train/0002.tar")
    OLD = {CURATED: ("AccessDenied", 403), SHARD: 200}
    NEW = {CURATED: 200, SHARD: ("AccessDenied", 403)}

    def decide(url):
        client = s3(url, s)
        return {k: outcome(lambda: client.get_object(Bucket="datasets", Key=k)["Body"].read()) for k in (CURATED, SHARD)}

    upstream_before = {k: c.recorder.count("GET", k) for k in (CURATED, SHARD)}
    answered = {CURATED: 0, SHARD: 0}  # reads that were allowed (the loop's and ours)
    lock = threading.Lock()

    def tally(decisions):
        with lock:
            for k, v in decisions.items():
                answered[k] += v == 200
        return decisions

    for r in c.replicas:
        assert tally(decide(r.url)) == OLD, r.name
    seen = []
    loop = Loop(lambda loop: seen.append(tally(decide(c.lb.url))))
    loop.start()
    try:
        time.sleep(0.5)
        took = []
        for i, r in enumerate(c.replicas):
            took.append(r.set_policy(POLICY_V2))
            # mid-rollout: the replicas done enforce the new policy, the others the old one
            for j, other in enumerate(c.replicas):
                assert tally(decide(other.url)) == (NEW if j <= i else OLD), (i, other.name)
            time.sleep(0.5)
    finally:
        loop.stop()
    assert loop.failures == [], loop.failures[:3]
    print(f"\npolicy rollout: {len(seen)} rounds through the round-robin; swap to new generation per replica (s): "
          + ", ".join(f"{t:.2f}" for t in took))
    # through the round-robin, every request was decided by one policy or the other, whole
    # (the two reads of one round may meet replicas on either side of the rollout)
    for d in seen:
        assert d[CURATED] in (OLD[CURATED], NEW[CURATED]) and d[SHARD] in (OLD[SHARD], NEW[SHARD]), d
    assert OLD in seen and NEW in seen, "the loop did not span the rollout"
    for r in c.replicas:
        assert tally(decide(r.url)) == NEW, r.name
    # refused reads never reached the store; allowed ones did, once each
    for k in (CURATED, SHARD):
        assert c.recorder.count("GET", k) - upstream_before[k] == answered[k], k
    # each replica recorded both policies' decisions for polly: v1 refusing the curated
    # data, then v2 allowing it by its new rule (allow[2])
    for r in c.replicas:
        mine = [x for x in r.audit() if sub_of(x) == "polly" and x.get("path") == "/datasets/" + CURATED]
        assert {x["decision"] for x in mine} == {"allow", "deny"}, r.name
        assert all(x["status"] == 403 and x["reason"] == "policy" for x in mine if x["decision"] == "deny")
        assert all("allow[2]" in x["rule"] for x in mine if x["decision"] == "allow"), [x.get("rule") for x in mine]
        assert "reloaded" in (r.dir / "claimgate.log").read_text()


# ---- (d) a revocation in the shared list, updated as kubelet updates a ConfigMap --------------


def test_revocation_in_a_configmap_volume_is_refused_on_every_replica(cluster):
    c = cluster
    c.put_object("datasets", "imagenet/scale/revocation.bin", b"revocation probe\n")
    KEY, PATH = "imagenet/scale/revocation.bin", "/datasets/imagenet/scale/revocation.bin"
    token = c.token("mallory")
    m1 = assume(c.lb.url, token, duration=900)
    m2 = assume(c.lb.url, token, duration=900)
    answered = []  # one entry per allowed read (appended from several threads)
    upstream_before = c.recorder.count("GET", KEY)

    def get(url, creds):
        got = outcome(lambda: s3(url, creds).get_object(Bucket="datasets", Key=KEY)["Body"].read())
        if got == 200:
            answered.append(url)
        return got

    def bearer(url):
        req = urllib.request.Request(url + PATH, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                r.read()
                if r.status == 200:
                    answered.append(url)
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    for r in c.replicas:
        assert get(r.url, m1) == 200 and get(r.url, m2) == 200, r.name
    assert [bearer(r.url) for r in c.replicas] == [200] * 3
    # the symlink the config names never changes
    link = c.revocations.path / "revoked.toml"
    link_before = (os.readlink(link), os.lstat(link).st_mtime_ns)

    def propagation(swap, refused):
        """Swaps the volume's content, then asks every replica at once, every 20 ms, until
        each refuses; returns each replica's delay in seconds, from the `..data` rename."""
        delays = {}
        swapped = swap()

        def watch(r):
            deadline = swapped + 10
            while time.monotonic() < deadline:
                if refused(r):
                    delays[r.name] = time.monotonic() - swapped
                    return
                time.sleep(0.02)

        threads = [threading.Thread(target=watch, args=(r,)) for r in c.replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return delays

    DENIED = ("AccessDenied", 403)
    # 1. one session revoked by its access key id
    one = REVOKED_NOTHING + f'\n[[revoked]]\naccess_key_id = "{m1["AccessKeyId"]}"\nreason = "pasted into a notebook"\n'
    delays1 = propagation(
        lambda: c.revocations.update({"revoked.toml": one}), lambda r: get(r.url, m1) == DENIED
    )
    assert set(delays1) == {"r0", "r1", "r2"}, f"not refused within 10 s on every replica: {delays1}"
    # it stays refused everywhere, and only it: the other session of the same subject works
    for r in c.replicas:
        assert [get(r.url, m1) for _ in range(3)] == [DENIED] * 3, r.name
        assert get(r.url, m2) == 200, r.name
    # 2. the whole subject: sessions, bearer tokens and new sessions, on every replica
    both = one + '\n[[revoked]]\nsubject = "mallory"\nreason = "left the company"\n'
    delays2 = propagation(
        lambda: c.revocations.update({"revoked.toml": both}), lambda r: get(r.url, m2) == DENIED
    )
    assert set(delays2) == {"r0", "r1", "r2"}, f"not refused within 10 s on every replica: {delays2}"
    for r in c.replicas:
        assert bearer(r.url) == 403, r.name
        with pytest.raises(botocore.exceptions.ClientError) as e:
            assume(r.url, token)
        assert error_code(e.value) == DENIED, r.name
    assert (os.readlink(link), os.lstat(link).st_mtime_ns) == link_before
    versions = [p.name for p in c.revocations.path.iterdir() if p.name.startswith("..2")]
    assert len(versions) == 1 and os.readlink(c.revocations.path / "..data") == versions[0], versions

    # nothing refused reached the store
    assert c.recorder.count("GET", KEY) - upstream_before == len(answered)
    # each replica's audit names who was refused and why (the reason is not told the caller)
    for r in c.replicas:
        refused = c.audit_of(r, lambda x: sub_of(x) == "mallory" and x.get("reason") == "revoked", at_least=3)
        assert all(x["status"] == 403 for x in refused)
        assert any(
            x.get("identity", {}).get("session") == m1["AccessKeyId"] and "pasted into a notebook" in x.get("detail", "")
            for x in refused
        ), r.name
        assert any(x.get("identity", {}).get("auth_method") == "bearer" and "left the company" in x.get("detail", "") for x in refused), r.name
        # the STS refusal is recorded as `access_denied`, with the revocation in its detail
        sts = c.audit_of(
            r,
            lambda x: sub_of(x) == "mallory" and x.get("operation") == "AssumeRoleWithWebIdentity" and x["status"] == 403,
        )
        assert all(x["detail"] == "revoked: left the company" for x in sts), sts
    worst = max(list(delays1.values()) + list(delays2.values()))
    print(
        "\nrevocation propagation (s, from the ..data rename to the first refusal): "
        + f"access key id {json.dumps({k: round(v, 3) for k, v in sorted(delays1.items())})}, "
        + f"subject {json.dumps({k: round(v, 3) for k, v in sorted(delays2.items())})}; worst {worst:.3f}"
    )
    assert worst < 3, f"a revocation took {worst:.2f} s to reach a replica"
