"""The AWS CLI (v1, from PyPI) with only the web-identity environment variables."""

import hashlib
import os
import subprocess
import sys
import pathlib

AWS = str(pathlib.Path(sys.executable).parent / "aws")


def aws(dev, *args, check=True):
    return subprocess.run([AWS, *args], env=dev.env(), capture_output=True, text=True, check=check)


def test_cp_of_20_mib_up_and_down_ls_and_rm(dev, tmp_path):
    data = os.urandom(1 << 20) * 20
    src = tmp_path / "shard.bin"
    src.write_bytes(data)
    aws(dev, "s3", "cp", str(src), "s3://checkpoints/alice/cli/shard.bin")
    dst = tmp_path / "back.bin"
    aws(dev, "s3", "cp", "s3://checkpoints/alice/cli/shard.bin", str(dst))
    assert hashlib.sha256(dst.read_bytes()).digest() == hashlib.sha256(data).digest()
    listing = aws(dev, "s3", "ls", "s3://checkpoints/alice/cli/").stdout
    assert "shard.bin" in listing and str(len(data)) in listing
    parts = [r for r in dev.audit() if r.get("operation") == "UploadPart"]
    assert len(parts) >= 3, "a 20 MiB copy uploads in 8 MiB parts"
    aws(dev, "s3", "rm", "s3://checkpoints/alice/cli/shard.bin")
    assert "shard.bin" not in aws(dev, "s3", "ls", "s3://checkpoints/alice/cli/", check=False).stdout


def test_denied_copy_fails_with_access_denied(dev, tmp_path):
    def denies():
        return sum(1 for r in dev.audit() if r.get("decision") == "deny" and r.get("resource") == "s3://datasets/pii/users.csv")

    before = denies()
    r = aws(dev, "s3", "cp", "s3://datasets/pii/users.csv", str(tmp_path / "x"), check=False)
    assert r.returncode != 0
    assert "403" in r.stderr or "AccessDenied" in r.stderr or "Forbidden" in r.stderr
    assert denies() > before, "the CLI's error was not claimgate's deny"


def test_sts_assume_role_with_web_identity(dev):
    token = pathlib.Path(dev.token_file()).read_text()
    out = aws(
        dev,
        "sts",
        "assume-role-with-web-identity",
        "--role-arn",
        "arn:aws:iam::000000000000:role/trainer",
        "--role-session-name",
        "cli-session",
        "--web-identity-token",
        token,
        "--duration-seconds",
        "900",
        "--output",
        "json",
    ).stdout
    import datetime
    import json

    doc = json.loads(out)
    expires = datetime.datetime.fromisoformat(doc["Credentials"]["Expiration"].replace("Z", "+00:00"))
    left = (expires - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    assert 850 <= left <= 900, left
    assert doc["Credentials"]["AccessKeyId"].startswith("ASIA")
    assert doc["SubjectFromWebIdentityToken"] == "alice"
    assert doc["AssumedRoleUser"]["Arn"].endswith(":assumed-role/trainer/cli-session")


def test_recursive_rm(dev, tmp_path):
    for i in range(3):
        f = tmp_path / f"ckpt-{i}.pt"
        f.write_bytes(b"w" * 1024)
        aws(dev, "s3", "cp", str(f), f"s3://checkpoints/alice/sweep/ckpt-{i}.pt")
    aws(dev, "s3", "rm", "--recursive", "s3://checkpoints/alice/sweep/")
    assert aws(dev, "s3", "ls", "s3://checkpoints/alice/sweep/", check=False).stdout.strip() == ""
    # the AWS CLI v1 deletes key by key; each one is authorized and audited
    deleted = [r for r in dev.audit() if r.get("operation") == "DeleteObject" and "/sweep/" in r.get("resource", "")]
    assert len(deleted) == 3 and all(r["decision"] == "allow" for r in deleted)


def test_a_slow_upload_crosses_several_session_expiries(tmp_path):
    """One `aws s3 cp` process, its bandwidth capped so its parts go out over ~8 s while
    sessions last 3 s: the CLI refreshes between parts and the upload completes whole."""
    from conftest import Dev

    dev = Dev(tmp_path, tls=False, session="3s")
    try:
        config = tmp_path / "aws-config"
        config.write_text("[default]\ns3 =\n    max_bandwidth = 3MB/s\n    max_concurrent_requests = 1\n    multipart_chunksize = 5MB\n")
        env = dev.env()
        env["AWS_CONFIG_FILE"] = str(config)
        data = os.urandom(24 << 20)
        src = tmp_path / "big.bin"
        src.write_bytes(data)
        before = sum(1 for r in dev.audit() if r.get("operation") == "AssumeRoleWithWebIdentity")
        subprocess.run([AWS, "s3", "cp", str(src), "s3://checkpoints/alice/cli/big.bin"], env=env, check=True, capture_output=True)
        back = tmp_path / "back.bin"
        subprocess.run([AWS, "s3", "cp", "s3://checkpoints/alice/cli/big.bin", str(back)], env=env, check=True, capture_output=True)
        assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(data).digest()
        records = dev.audit()
        issued = sum(1 for r in records if r.get("operation") == "AssumeRoleWithWebIdentity") - before
        assert issued >= 3, f"only {issued} sessions: the upload did not cross expiries"
        sessions = {r["identity"]["session"] for r in records if r.get("operation") == "UploadPart"}
        assert len(sessions) >= 2, "every part was signed with one session"
    finally:
        dev.stop()
