"""S3 operations beyond get/put through claimgate: tagging and ACLs (granted → they work end to
end against the dev store; not granted → AccessDenied), copies of keys that need encoding, and
traversal spellings refused before any store sees them."""

import pathlib
import urllib.error
import urllib.request
import ssl
import uuid

import boto3
import botocore.config
import botocore.exceptions
import pytest


def s3():
    return boto3.session.Session().client("s3")


def code(call):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    return e.value.response["Error"]["Code"]


def test_object_tagging_on_a_granted_key_works_end_to_end(aws_env):
    c = s3()
    key = "alice/tags/step-9.pt"
    c.put_object(Bucket="checkpoints", Key=key, Body=b"weights")
    c.put_object_tagging(
        Bucket="checkpoints",
        Key=key,
        Tagging={"TagSet": [{"Key": "run", "Value": "r-7"}, {"Key": "eval", "Value": "0.91"}]},
    )
    tags = c.get_object_tagging(Bucket="checkpoints", Key=key)["TagSet"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("eval", "0.91"), ("run", "r-7")]
    c.delete_object_tagging(Bucket="checkpoints", Key=key)
    assert c.get_object_tagging(Bucket="checkpoints", Key=key)["TagSet"] == []
    acl = c.get_object_acl(Bucket="checkpoints", Key=key)
    assert any(g["Permission"] == "FULL_CONTROL" for g in acl["Grants"]), acl

    ops = {r.get("operation"): r for r in aws_env.audit() if r.get("resource") == f"s3://checkpoints/{key}"}
    assert ops["PutObjectTagging"]["action"] == "s3:PutObjectTagging"
    assert ops["PutObjectTagging"]["decision"] == "allow"
    assert ops["GetObjectAcl"]["action"] == "s3:GetObjectAcl"


def test_tagging_and_acls_not_granted_are_access_denied(aws_env):
    c = s3()
    # readable, but tagging and ACLs on datasets are not granted to trainers
    assert code(lambda: c.get_object_tagging(Bucket="datasets", Key="imagenet/train/0001.tar")) == "AccessDenied"
    assert code(lambda: c.get_object_acl(Bucket="datasets", Key="imagenet/train/0001.tar")) == "AccessDenied"
    assert (
        code(
            lambda: c.put_object_tagging(
                Bucket="datasets", Key="imagenet/train/0001.tar", Tagging={"TagSet": [{"Key": "a", "Value": "b"}]}
            )
        )
        == "AccessDenied"
    )
    # changing who may read a checkpoint is not granted either
    assert code(lambda: c.put_object_acl(Bucket="checkpoints", Key="alice/README", ACL="public-read")) == "AccessDenied"
    # bucket configuration: classified, and denied by default
    assert code(lambda: c.get_bucket_policy(Bucket="datasets")) == "AccessDenied"
    assert code(lambda: c.get_bucket_versioning(Bucket="datasets")) == "AccessDenied"
    assert code(lambda: c.list_object_versions(Bucket="datasets", Prefix="imagenet/")) == "AccessDenied"
    assert code(lambda: c.create_bucket(Bucket="new-bucket")) == "AccessDenied"
    denied = [r for r in aws_env.audit() if r.get("decision") == "deny"]
    actions = {r["action"] for r in denied}
    assert {"s3:GetObjectTagging", "s3:GetObjectAcl", "s3:PutObjectAcl", "s3:GetBucketPolicy",
            "s3:ListBucketVersions", "s3:CreateBucket"} <= actions, actions


def test_copies_of_keys_that_need_encoding(aws_env):
    c = s3()
    for key in ["alice/copy/a b.pt", "alice/copy/a+b.pt", "alice/copy/caf\u00e9 (1).pt"]:
        c.put_object(Bucket="checkpoints", Key=key, Body=key.encode())
        c.copy_object(Bucket="checkpoints", Key=key + ".bak", CopySource={"Bucket": "checkpoints", "Key": key})
        got = c.get_object(Bucket="checkpoints", Key=key + ".bak")["Body"].read()
        assert got == key.encode()
        # the string form of CopySource goes through the same encoding in botocore
        c.copy_object(Bucket="checkpoints", Key=key + ".bak2", CopySource=f"checkpoints/{key}")
        assert c.get_object(Bucket="checkpoints", Key=key + ".bak2")["Body"].read() == key.encode()
    # a copy out of the denied prefix is refused however the source is spelled
    assert code(lambda: c.copy_object(Bucket="checkpoints", Key="alice/x", CopySource="datasets/pii/users.csv")) == "AccessDenied"
    assert code(
        lambda: c.copy_object(Bucket="checkpoints", Key="alice/x", CopySource="datasets/imagenet/../pii/users.csv")
    ) in ("InvalidURI", "InvalidArgument")


def test_traversal_spellings_from_the_issue_are_refused(dev):
    """The curls of the issue, with the token file `claimgate dev` writes."""
    token = pathlib.Path(dev.token_file("alice")).read_text().strip()
    ctx = ssl.create_default_context(cafile=dev.ca) if dev.ca else None
    data_dir = dev.dir / "data"
    before = {p: p.read_bytes() for p in data_dir.rglob("*") if p.is_file()}
    for method, path, body in [
        ("GET", "/datasets/imagenet/../pii/users.csv", None),
        ("GET", "/datasets/./pii/users.csv", None),
        ("GET", "/datasets/imagenet/%2e%2e/pii/users.csv", None),
        ("PUT", "/checkpoints/alice/../../models/prod/model.pt", b"evil"),
        ("GET", "/datasets//pii/users.csv", None),
    ]:
        req = urllib.request.Request(dev.url + path, data=body, method=method, headers={"Authorization": f"Bearer {token}"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, context=ctx)
        assert e.value.code == 400, path
        text = e.value.read().decode()
        assert "<Code>InvalidURI</Code>" in text, text
        assert "ada@example.com" not in text
    after = {p: p.read_bytes() for p in data_dir.rglob("*") if p.is_file()}
    assert after == before


def _post_form(dev, url, fields, filename, content):
    """A browser's form upload, built with the standard library: the fields boto3 returned,
    then the file, last (as S3 requires)."""
    boundary = "----claimgatePyForm" + uuid.uuid4().hex
    body = b""
    for name, value in fields.items():
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    body += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body += content + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    ctx = ssl.create_default_context(cafile=dev.ca) if dev.ca else None
    try:
        with urllib.request.urlopen(req, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def s3v4():
    """boto3 presigns with SigV2 unless told otherwise; claimgate accepts SigV4 only."""
    return boto3.session.Session().client("s3", config=botocore.config.Config(signature_version="s3v4"))


def test_presigned_post_from_boto3_uploads_through_claimgate(aws_env):
    c = s3v4()
    post = c.generate_presigned_post(
        Bucket="checkpoints",
        Key="alice/post/${filename}",
        Conditions=[["content-length-range", 1, 1 << 20]],
        ExpiresIn=300,
    )
    assert post["fields"]["x-amz-credential"].startswith("ASIA"), post["fields"]
    status, body = _post_form(aws_env, post["url"], post["fields"], "weights.bin", b"form-uploaded weights")
    assert status in (200, 204), body
    assert c.get_object(Bucket="checkpoints", Key="alice/post/weights.bin")["Body"].read() == b"form-uploaded weights"

    rec = [r for r in aws_env.audit() if r.get("operation") == "PostObject" and r.get("status") in (200, 204)]
    assert rec, "no audit record for the form upload"
    assert rec[-1]["resource"] == "s3://checkpoints/alice/post/weights.bin"
    assert rec[-1]["identity"]["auth_method"] == "sts_session"


def test_presigned_post_to_a_denied_key_is_access_denied(aws_env):
    c = s3v4()
    post = c.generate_presigned_post(Bucket="datasets", Key="pii/copied.csv", ExpiresIn=300)
    status, body = _post_form(aws_env, post["url"], post["fields"], "copied.csv", b"a,b\n1,2\n")
    assert status == 403, body
    assert b"<Code>AccessDenied</Code>" in body, body
    assert not (aws_env.dir / "data" / "datasets" / "pii" / "copied.csv").exists()


def test_sigv2_presigned_post_is_refused_with_the_fix(aws_env):
    post = s3().generate_presigned_post(Bucket="checkpoints", Key="alice/post/v2.bin", ExpiresIn=300)
    assert "AWSAccessKeyId" in post["fields"], post["fields"]  # boto3's default for presigned posts
    status, body = _post_form(aws_env, post["url"], post["fields"], "v2.bin", b"x")
    assert status == 400, body
    assert b"<Code>InvalidArgument</Code>" in body and b"s3v4" in body, body
