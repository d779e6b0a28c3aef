"""Real AWS clients (boto3, the AWS CLI) against `claimgate dev`, over plain HTTP and TLS.

Each test session starts `claimgate dev` on free ports in a temporary directory — the proxy
with STS, a dev OIDC issuer, and a SigV4-verifying S3 store — and points the clients at it
with nothing but the four environment variables a job would get.
"""

import json
import os
import pathlib
import signal
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("CLAIMGATE_BIN", str(ROOT / "target" / "debug" / "claimgate"))
TRAINER = "arn:aws:iam::000000000000:role/trainer"


class Dev:
    def __init__(self, tmp, tls, session="15m"):
        self.dir = tmp / ("tls" if tls else "plain")
        args = [BIN, "dev", "--port", "0", "--dir", str(self.dir), "--session", session]
        if tls:
            args.append("--tls")
        env = dict(os.environ, CLAIMGATE_LOG="warn")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)
        self.lines = []
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("claimgate dev: ready"):
                break
        else:
            raise RuntimeError("claimgate dev did not start:\n" + "\n".join(self.lines))
        proxy = next(l.split()[1] for l in self.lines if l.strip().startswith("proxy "))
        self.url = proxy
        # the variables exactly as `claimgate dev` prints them for a newcomer to paste
        exports = [l.strip()[len("export "):].split("=", 1) for l in self.lines if l.strip().startswith("export AWS_")]
        # the web-identity block, and the credential_process profile printed after it
        profile = {"AWS_CONFIG_FILE", "AWS_PROFILE"}
        self.printed = {k: v for k, v in exports if k not in profile}
        self.profile_vars = {k: v for k, v in exports if k in profile}
        assert set(self.printed) >= {
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_ROLE_ARN",
            "AWS_ENDPOINT_URL_STS",
            "AWS_ENDPOINT_URL_S3",
        }, self.printed
        self.tls = tls
        self.ca = str(self.dir / "tls" / "cert.pem") if tls else None

    def token_file(self, name="alice"):
        return str(self.dir / "tokens" / f"{name}.jwt")

    def mint(self, sub, *claims, ttl="1h"):
        args = [BIN, "dev", "token", "--dir", str(self.dir), "--sub", sub, "--ttl", ttl]
        for c in claims:
            args += ["--claim", c]
        return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()

    def env(self, token_file=None, role=TRAINER):
        """Exactly what a job gets: the four variables (plus region, and the CA over TLS)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(self.printed)
        if token_file:
            env["AWS_WEB_IDENTITY_TOKEN_FILE"] = token_file
        env["AWS_ROLE_ARN"] = role
        # keep whatever the machine has out of the picture
        env.update(
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
            AWS_EC2_METADATA_DISABLED="true",
        )
        return env

    def profile_env(self):
        """What a pyarrow/Polars/Lance job gets: the profile `claimgate dev` printed, whose
        credential_process trades the token (no web-identity variables at all)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(self.profile_vars)
        env.update(AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_EC2_METADATA_DISABLED="true")
        return env

    def audit(self):
        path = self.dir / "audit.log"
        time.sleep(0.3)
        return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture(scope="session", params=["plain", "tls"])
def dev(request, tmp_path_factory):
    d = Dev(tmp_path_factory.mktemp("claimgate"), request.param == "tls")
    yield d
    d.stop()
    assert d.proc.returncode == 0, "claimgate dev did not stop cleanly"


@pytest.fixture
def aws_env(dev, monkeypatch):
    """Applies the job's environment to this process (for boto3 in-process)."""
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    for k, v in dev.env().items():
        monkeypatch.setenv(k, v)
    return dev
