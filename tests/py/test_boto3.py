"""boto3 with only the web-identity environment variables."""

import hashlib
import os
import urllib.request
import ssl

import boto3
import botocore.config
import botocore.exceptions
import pytest


def s3():
    return boto3.session.Session().client("s3")


def test_put_get_head_list_delete(aws_env):
    c = s3()
    c.put_object(Bucket="checkpoints", Key="alice/boto3/step-1.pt", Body=b"weights v1")
    got = c.get_object(Bucket="checkpoints", Key="alice/boto3/step-1.pt")["Body"].read()
    assert got == b"weights v1"
    head = c.head_object(Bucket="checkpoints", Key="alice/boto3/step-1.pt")
    assert head["ContentLength"] == len(b"weights v1")
    listing = c.list_objects_v2(Bucket="checkpoints", Prefix="alice/boto3/")
    assert [o["Key"] for o in listing["Contents"]] == ["alice/boto3/step-1.pt"]
    shards = c.list_objects_v2(Bucket="datasets", Prefix="imagenet/train/")
    assert len(shards["Contents"]) == 2
    c.delete_object(Bucket="checkpoints", Key="alice/boto3/step-1.pt")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.head_object(Bucket="checkpoints", Key="alice/boto3/step-1.pt")
    assert e.value.response["Error"]["Code"] == "404"

    records = aws_env.audit()
    sessions = [r for r in records if r.get("identity", {}).get("auth_method") == "sts_session"]
    assert sessions, "no request was authenticated with an STS session"
    assert all(r["identity"]["sub"] == "alice" and r["identity"]["roles"] == ["trainer"] for r in sessions)
    assert all(r["identity"]["session"].startswith("ASIA") for r in sessions)


def test_denied_access_raises_access_denied(aws_env):
    def denies():
        return sum(1 for r in aws_env.audit() if r.get("decision") == "deny")

    c = s3()
    before = denies()
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.get_object(Bucket="datasets", Key="pii/users.csv")
    assert e.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.put_object(Bucket="checkpoints", Key="bob/not-mine.pt", Body=b"x")
    assert e.value.response["Error"]["Code"] == "AccessDenied"
    # each refusal was claimgate's policy decision, on record
    assert denies() - before == 2


def test_presigned_get_with_plain_http_client(aws_env):
    c = boto3.session.Session().client("s3", config=botocore.config.Config(signature_version="s3v4"))
    url = c.generate_presigned_url(
        "get_object", Params={"Bucket": "datasets", "Key": "imagenet/train/0001.tar"}, ExpiresIn=300
    )
    ctx = ssl.create_default_context(cafile=aws_env.ca) if aws_env.ca else None
    with urllib.request.urlopen(url, context=ctx) as r:
        assert r.read() == b"demo training shard 0001\n"


def test_managed_upload_of_64_mib(aws_env, tmp_path):
    data = os.urandom(1 << 20) * 64
    src = tmp_path / "model.bin"
    src.write_bytes(data)
    c = s3()
    c.upload_file(str(src), "checkpoints", "alice/big/model.bin")  # multipart: 8 MiB parts
    dst = tmp_path / "back.bin"
    c.download_file("checkpoints", "alice/big/model.bin", str(dst))
    assert hashlib.sha256(dst.read_bytes()).digest() == hashlib.sha256(data).digest()
    ops = {r.get("operation") for r in aws_env.audit()}
    assert {"CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"} <= ops


def test_credentials_refresh_with_a_rotated_token_file(dev, tmp_path, monkeypatch):
    """15-minute sessions are always inside botocore's refresh window, so every call
    re-assumes the role; the token file is rotated under the running client."""
    token_file = tmp_path / "token"
    token_file.write_text(dev.mint("alice", "groups=ml-engineers"))
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    for k, v in dev.env(token_file=str(token_file)).items():
        monkeypatch.setenv(k, v)
    c = s3()
    failures = 0
    for i in range(12):
        if i % 4 == 3:
            token_file.write_text(dev.mint("alice", "groups=ml-engineers"))
        try:
            c.list_objects_v2(Bucket="datasets", Prefix="imagenet/")
        except botocore.exceptions.ClientError:
            failures += 1
    assert failures == 0
    sessions = {
        r["identity"]["session"]
        for r in dev.audit()
        if r.get("operation") == "AssumeRoleWithWebIdentity" and r["decision"] == "allow"
    }
    assert len(sessions) >= 3, f"expected several refreshes, saw {len(sessions)} sessions"


def test_delete_objects_refuses_a_batch_holding_a_forbidden_key(aws_env):
    c = s3()
    c.put_object(Bucket="checkpoints", Key="alice/batch/1.pt", Body=b"1")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        c.delete_objects(
            Bucket="checkpoints",
            Delete={"Objects": [{"Key": "alice/batch/1.pt"}, {"Key": "bob/1.pt"}]},
        )
    assert e.value.response["Error"]["Code"] == "AccessDenied"
    assert c.head_object(Bucket="checkpoints", Key="alice/batch/1.pt")["ContentLength"] == 1
    out = c.delete_objects(Bucket="checkpoints", Delete={"Objects": [{"Key": "alice/batch/1.pt"}]})
    assert [d["Key"] for d in out["Deleted"]] == ["alice/batch/1.pt"]


def test_a_long_running_loop_survives_several_session_expiries(tmp_path, monkeypatch):
    """Sessions of 3 s expire several times during the loop; botocore refreshes them from
    the (rotated) token file by itself and no call fails."""
    import time
    from conftest import Dev

    dev = Dev(tmp_path, tls=False, session="3s")
    try:
        token_file = tmp_path / "token"
        token_file.write_text(dev.mint("alice", "groups=ml-engineers"))
        for k in list(os.environ):
            if k.startswith("AWS_"):
                monkeypatch.delenv(k)
        for k, v in dev.env(token_file=str(token_file)).items():
            monkeypatch.setenv(k, v)
        c = s3()
        failures, calls = 0, 0
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                c.head_object(Bucket="datasets", Key="imagenet/train/0001.tar")
            except botocore.exceptions.ClientError:
                failures += 1
            calls += 1
            if calls % 5 == 0:
                token_file.write_text(dev.mint("alice", "groups=ml-engineers"))
            time.sleep(0.5)
        assert failures == 0 and calls >= 15
        issued = [r for r in dev.audit() if r.get("operation") == "AssumeRoleWithWebIdentity"]
        assert len(issued) >= 4, "sessions were not renewed across their expiry"
    finally:
        dev.stop()
