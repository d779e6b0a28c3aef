"""Downstream credentials without static keys, against a local AWS (moto's server mode).

moto serves STS and S3 on one port. With `INITIAL_NO_AUTH_ACTION_COUNT` it lets the set-up
calls through, then verifies every request's SigV4 signature against the IAM keys it issued
and checks IAM policies: claimgate's AssumeRole call must be signed by the source keys, and
its S3 requests by the session's. Its recorder keeps every request it received, which is how
the tests see the SourceIdentity and session tags that reached STS.

claimgate itself runs from a config file (`claimgate serve`) with a `claimgate dev` instance
as its OIDC issuer (for tokens); the route's source keys reach it only through the
environment, as the AWS default chain reads them.
"""

import base64
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import boto3
import pytest

from conftest import BIN, Dev

ACCOUNT = "123456789012"
SETUP_CALLS = 8


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


class Moto:
    """moto_server on a free port, verifying signatures after the set-up calls, recording."""

    def __init__(self, tmp):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.recording = tmp / "moto-recording.jsonl"
        env = dict(
            os.environ,
            INITIAL_NO_AUTH_ACTION_COUNT=str(SETUP_CALLS),
            MOTO_ENABLE_RECORDING="True",
            MOTO_RECORDER_FILEPATH=str(self.recording),
        )
        server = pathlib.Path(sys.executable).parent / "moto_server"
        self.proc = subprocess.Popen(
            [str(server), "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.url + "/moto-api/")

    def client(self, service, **keys):
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=keys.get("ak", "setup"),
            aws_secret_access_key=keys.get("sk", "setup"),
        )

    def setup(self):
        """Eight unauthenticated calls: a user with keys that may assume `ml-trainer`, the role
        (trusting that user, allowed s3:* on the lake), the bucket and one object."""
        iam = self.client("iam")
        user = iam.create_user(UserName="claimgate")["User"]  # 1
        key = iam.create_access_key(UserName="claimgate")["AccessKey"]  # 2
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": user["Arn"]},
                    "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
                }
            ],
        }
        iam.create_role(RoleName="ml-trainer", AssumeRolePolicyDocument=json.dumps(trust))  # 3
        lake = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": ["arn:aws:s3:::lake", "arn:aws:s3:::lake/*"]}],
        }
        iam.put_role_policy(RoleName="ml-trainer", PolicyName="lake", PolicyDocument=json.dumps(lake))  # 4
        assume = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": f"arn:aws:iam::{ACCOUNT}:role/ml-*"}],
        }
        iam.put_user_policy(UserName="claimgate", PolicyName="assume", PolicyDocument=json.dumps(assume))  # 5
        # the source user itself may read the lake too (for the `aws` kind's own test)
        iam.put_user_policy(UserName="claimgate", PolicyName="lake", PolicyDocument=json.dumps(lake))  # 6
        s3 = self.client("s3")
        s3.create_bucket(Bucket="lake")  # 7
        s3.put_object(Bucket="lake", Key="train/0001.tar", Body=b"shard one")  # 8
        self.key = (key["AccessKeyId"], key["SecretAccessKey"])
        self.recording.write_text("")  # from here on, only what claimgate sends

    def received(self):
        """Every request moto received since recording began, as (method, url, headers, body)."""
        out = []
        for line in self.recording.read_text().splitlines():
            e = json.loads(line)
            body = base64.b64decode(e["body"]) if e.get("body_encoded") else (e.get("body") or "").encode()
            out.append((e["method"], e["url"], e["headers"], body))
        return out

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Serve:
    """`claimgate serve` with a config of the test's own."""

    def __init__(self, tmp, config, env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.audit_path = tmp / "audit.log"
        (tmp / "claimgate.toml").write_text(config.replace("{listen}", f"127.0.0.1:{self.port}"))
        self.log = open(tmp / "claimgate.log", "w")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--config", str(tmp / "claimgate.toml")], env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_for(self.url + "/")

    def get(self, path, token):
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def put(self, path, token, body):
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
        req = urllib.request.Request(self.url + path, data=body, method="PUT", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def audit(self):
        time.sleep(0.3)
        return [json.loads(l) for l in self.audit_path.read_text().splitlines()] if self.audit_path.exists() else []

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)
        self.log.close()


POLICY = """
[[roles]]
name = "trainer"
members = [ { claim = "groups", contains = "ml-engineers" } ]
allow = [ { actions = ["s3:GetObject", "s3:PutObject"], resources = ["s3://lake/*"] } ]
deny = [ { actions = ["s3:*"], resources = ["s3://lake/secret/*"] } ]
"""


ADMIN_PORT = {}


def config(tmp, dev, moto, credentials, extra=""):
    (tmp / "policies").mkdir(exist_ok=True)
    (tmp / "policies" / "ml.toml").write_text(POLICY)
    (tmp / "upload-id.key").write_text(base64.b64encode(os.urandom(32)).decode())
    issuer = next(l.split()[2] for l in dev.lines if l.strip().startswith("dev IdP"))
    return f"""
[server]
listen = "{{listen}}"
shutdown_grace = "2s"

[admin]
listen = "127.0.0.1:{ADMIN_PORT.setdefault(str(tmp), free_port())}"

[[issuers]]
issuer = "{issuer}"
audiences = ["claimgate"]

[policies]
dir = "policies"

[audit]
path = "audit.log"

[[routes]]
name = "lake"
kind = "s3"
upstream = "{moto.url}"
region = "us-east-1"
literal_dot_keys = true
upload_id_key = "file:upload-id.key"
credentials = {credentials}
{extra}
"""


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    d = Dev(tmp_path_factory.mktemp("idp"), tls=False)
    yield d
    d.stop()


@pytest.fixture
def moto(tmp_path):
    m = Moto(tmp_path)
    m.setup()
    yield m
    m.stop()


def source_env(moto):
    """The source keys, where the AWS default chain looks first: the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=moto.key[0],
        AWS_SECRET_ACCESS_KEY=moto.key[1],
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        CLAIMGATE_LOG="info",
    )
    return env


def form(body):
    return dict(urllib.parse.parse_qsl(body.decode()))


def test_assume_role_per_caller_with_source_identity_and_session_tags(dev, moto, tmp_path):
    creds = f'{{ kind = "assume_role", role_arn = "arn:aws:iam::{ACCOUNT}:role/ml-${{role}}", source = {{ kind = "aws" }}, sts_endpoint = "{moto.url}", session_duration = "15m" }}'
    cg = Serve(tmp_path, config(tmp_path, dev, moto, creds), source_env(moto))
    try:
        alice = dev.mint("alice", "groups=ml-engineers")
        bob = dev.mint("system:serviceaccount:training:job-7", "groups=ml-engineers")
        assert cg.get("/lake/train/0001.tar", alice) == (200, b"shard one")
        assert cg.put("/lake/runs/alice/loss.json", alice, b'{"loss": 0.3}')[0] == 200
        assert cg.get("/lake/train/0001.tar", alice)[0] == 200
        # bob's first requests arrive together: one AssumeRole serves them all
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda _: cg.get("/lake/train/0001.tar", bob), range(16)))
        assert answers == [(200, b"shard one")] * 16
        # policy still decides first: a denied key never costs an STS call or reaches S3, even
        # for a caller with no session yet
        before = len(moto.received())
        status, body = cg.get("/lake/secret/payroll.csv", alice)
        assert status == 403 and b"AccessDenied" in body
        carol = dev.mint("carol", "groups=ml-engineers")
        assert cg.get("/lake/secret/payroll.csv", carol)[0] == 403
        assert len(moto.received()) == before

        calls = [form(b) for m, u, h, b in moto.received() if b"Action=AssumeRole" in b]
        # one session per caller, reused across that caller's requests
        assert len(calls) == 2, calls
        by_subject = {c["SourceIdentity"]: c for c in calls}
        a = by_subject["alice"]
        assert a["RoleArn"] == f"arn:aws:iam::{ACCOUNT}:role/ml-trainer"
        assert a["RoleSessionName"] == "alice" and a["DurationSeconds"] == "900"
        tags = {a[f"Tags.member.{i}.Key"]: a[f"Tags.member.{i}.Value"] for i in (1, 2, 3)}
        assert tags == {"claimgate:sub": "alice", "claimgate:iss": cg_issuer(dev), "claimgate:role": "trainer"}
        b = by_subject["system-serviceaccount-training-job-7"]
        assert b["Tags.member.1.Value"] == "system:serviceaccount:training:job-7"
        # the STS call was signed with the source user's key; S3 calls with the sessions'
        sts_auth = [h.get("Authorization", "") for m, u, h, body in moto.received() if b"Action=AssumeRole" in body]
        assert all(f"Credential={moto.key[0]}/" in a for a in sts_auth)
        s3_auth = [h.get("Authorization", "") for m, u, h, body in moto.received() if "/lake/" in u]
        assert s3_auth and all("Credential=ASIA" in a or "Credential=FSIA" in a for a in s3_auth), s3_auth
        assert all(h.get("X-Amz-Security-Token") for m, u, h, body in moto.received() if "/lake/" in u)

        # a reload (a policy edit) keeps the sessions: the route's credentials are unchanged
        policy = tmp_path / "policies" / "ml.toml"
        policy.write_text(policy.read_text() + "\n# edited\n")
        time.sleep(2)
        assert cg.get("/lake/train/0001.tar", alice)[0] == 200
        assert "reloaded" in (tmp_path / "claimgate.log").read_text()
        assert len([b for m, u, h, b in moto.received() if b"Action=AssumeRole" in b]) == 2

        s3 = moto.client("s3", ak=moto.key[0], sk=moto.key[1])
        assert s3.get_object(Bucket="lake", Key="runs/alice/loss.json")["Body"].read() == b'{"loss": 0.3}'
    finally:
        cg.stop()


def cg_issuer(dev):
    return next(l.split()[2] for l in dev.lines if l.strip().startswith("dev IdP"))


def test_assume_role_refused_by_sts_is_a_503_and_nothing_reaches_s3(dev, moto, tmp_path):
    # a role the source user may not assume
    creds = f'{{ kind = "assume_role", role_arn = "arn:aws:iam::{ACCOUNT}:role/other", source = {{ kind = "aws" }}, sts_endpoint = "{moto.url}" }}'
    cg = Serve(tmp_path, config(tmp_path, dev, moto, creds), source_env(moto))
    try:
        alice = dev.mint("alice", "groups=ml-engineers")
        status, body = cg.get("/lake/train/0001.tar", alice)
        assert status == 503 and b"ServiceUnavailable" in body, body
        assert not [u for m, u, h, b in moto.received() if "/lake/" in u]
        # the failure is remembered for a few seconds: the next requests do not ask STS again
        assert [cg.get("/lake/train/0001.tar", alice)[0] for _ in range(5)] == [503] * 5
        assert len([b for m, u, h, b in moto.received() if b"Action=AssumeRole" in b]) == 1
        record = [r for r in cg.audit() if r.get("path") == "/lake/train/0001.tar"][-1]
        assert record["reason"] == "upstream_credentials_unavailable" and record["status"] == 503
        with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT[str(tmp_path)]}/metrics") as r:
            metrics = r.read().decode()
        assert 'claimgate_upstream_errors_total{kind="credentials",route="lake"} 6' in metrics, [
            l for l in metrics.splitlines() if "upstream_errors" in l
        ]
        log = (tmp_path / "claimgate.log").read_text()
        assert "AssumeRole of arn:aws:iam::123456789012:role/other failed" in log
        assert moto.key[1] not in log and moto.key[1] not in body.decode()
    finally:
        cg.stop()


def test_aws_default_chain_signs_with_the_hosts_credentials(dev, moto, tmp_path):
    cg = Serve(tmp_path, config(tmp_path, dev, moto, '{ kind = "aws" }'), source_env(moto))
    try:
        alice = dev.mint("alice", "groups=ml-engineers")
        assert cg.get("/lake/train/0001.tar", alice) == (200, b"shard one")
        s3_auth = [h.get("Authorization", "") for m, u, h, b in moto.received() if "/lake/" in u]
        assert s3_auth and all(f"Credential={moto.key[0]}/" in a for a in s3_auth)
    finally:
        cg.stop()
    # the same config with keys moto does not know: moto refuses, claimgate says so
    env = source_env(moto)
    env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    cg = Serve(tmp_path, config(tmp_path, dev, moto, '{ kind = "aws" }'), env)
    try:
        status, _ = cg.get("/lake/train/0001.tar", dev.mint("alice", "groups=ml-engineers"))
        assert status == 502, status  # the upstream refused claimgate's keys: not the caller's fault
    finally:
        cg.stop()


def test_aws_chain_with_web_identity_renews_before_expiry(tmp_path):
    """IRSA's shape: the `aws` kind's chain finds AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN,
    trades the token at AWS_ENDPOINT_URL_STS and signs with the session. The STS and the S3
    behind it are a second claimgate (`claimgate dev`, 3 s sessions): a loop of requests
    through the first one crosses several expiries, and every request must succeed."""
    inner = Dev(tmp_path / "inner", tls=False, session="3s")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_WEB_IDENTITY_TOKEN_FILE=inner.token_file("alice"),
            AWS_ROLE_ARN="arn:aws:iam::000000000000:role/trainer",
            AWS_ENDPOINT_URL_STS=inner.url,
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
            AWS_EC2_METADATA_DISABLED="true",
            CLAIMGATE_LOG="info",
        )
        outer_dir = tmp_path / "outer"
        outer_dir.mkdir()
        (outer_dir / "policies").mkdir()
        (outer_dir / "policies" / "ml.toml").write_text(POLICY.replace("s3://lake/*", "s3://datasets/*"))
        (outer_dir / "upload-id.key").write_text(base64.b64encode(os.urandom(32)).decode())
        config = f"""
[server]
listen = "{{listen}}"
shutdown_grace = "2s"

[[issuers]]
issuer = "{cg_issuer(inner)}"
audiences = ["claimgate"]

[policies]
dir = "policies"

[audit]
path = "audit.log"

[[routes]]
name = "lake"
kind = "s3"
upstream = "{inner.url}"
region = "us-east-1"
upload_id_key = "file:upload-id.key"
credentials = {{ kind = "aws" }}
"""
        cg = Serve(outer_dir, config, env)
        try:
            bob = inner.mint("bob", "groups=ml-engineers")
            statuses = []
            deadline = time.time() + 8
            while time.time() < deadline:
                statuses.append(cg.get("/datasets/imagenet/train/0001.tar", bob))
                time.sleep(0.4)
            assert statuses == [(200, b"demo training shard 0001\n")] * len(statuses)
            records = inner.audit()
            issued = [r for r in records if r.get("operation") == "AssumeRoleWithWebIdentity"]
            assert len(issued) >= 3, "the chain's sessions were not renewed"
            reads = [r for r in records if r.get("operation") == "GetObject"]
            # the inner claimgate saw the outer one as alice's sessions, several of them
            assert {r["identity"]["sub"] for r in reads} == {"alice"}
            assert len({r["identity"]["session"] for r in reads}) >= 3
        finally:
            cg.stop()
    finally:
        inner.stop()
