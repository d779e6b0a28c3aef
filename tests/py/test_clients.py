"""The ML data clients, each through `claimgate dev` the way its README row says.

For every client: one allowed read, one allowed write, one denied read that surfaces as the
client's own permission error (and an audit record saying deny), and a run across several
session expiries with no failure.

Three ways in, as the README's client table says:
- the web-identity variables `claimgate dev` prints (s3fs, HuggingFace `datasets`, PyTorch
  over fsspec: botocore trades the token at claimgate's STS and refreshes it itself);
- the printed profile, whose `credential_process` is `claimgate credentials` (pyarrow, Lance,
  delta-rs, s3torchconnector: SDKs that cannot reach claimgate's STS themselves; each runs the
  helper again when the credentials near their expiry), or the helper as a Polars provider
  function;
- object_store's own web identity over TLS (`claimgate dev --tls`: Polars without a helper).
"""

import io
import os
import subprocess
import time

import pytest

from conftest import BIN, Dev


def use(monkeypatch, env):
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    d = Dev(tmp_path_factory.mktemp("clients"), tls=False)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def short(tmp_path_factory):
    """Sessions of 3 s: a loop of a few seconds crosses several expiries."""
    d = Dev(tmp_path_factory.mktemp("clients-short"), tls=False, session="3s")
    yield d
    d.stop()


@pytest.fixture
def profile(plain, monkeypatch):
    use(monkeypatch, plain.profile_env())
    return plain


@pytest.fixture
def web_identity(plain, monkeypatch):
    use(monkeypatch, plain.env())
    return plain


def denials(dev, resource):
    """How many denies the audit log holds for `resource`, or for one under it when
    `resource` ends in `/`. A test counts before and after its denied call, so the deny it
    finds is its own (the module's tests share one audit log)."""

    def hit(r):
        got = r.get("resource", "")
        return got.startswith(resource) if resource.endswith("/") else got == resource

    return sum(1 for r in dev.audit() if r.get("decision") == "deny" and hit(r))


def issued(dev):
    return sum(1 for r in dev.audit() if r.get("operation") == "AssumeRoleWithWebIdentity")


def across_expiries(dev, read, seconds=8):
    """Calls `read` for `seconds` with 3 s sessions; no call may fail, and the sessions must
    have been renewed along the way."""
    before = issued(dev)
    calls, failures = 0, []
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            read()
        except Exception as e:  # noqa: BLE001 - every failure is the finding
            failures.append(repr(e))
        calls += 1
        time.sleep(0.4)
    assert not failures, failures[:3]
    assert calls >= 5
    assert issued(dev) - before >= 2, "the sessions were not renewed across their expiry"


def table():
    import pyarrow as pa

    return pa.table({"step": [1, 2, 3, 4], "loss": [0.9, 0.5, 0.4, 0.3], "split": ["a", "b", "a", "b"]})


# --- pyarrow (the AWS C++ SDK) -------------------------------------------------------------


def arrow_fs(dev):
    from pyarrow import fs

    # pyarrow reads neither the profile's endpoint_url nor AWS_ENDPOINT_URL_S3.
    scheme, host = dev.url.split("://")
    return fs.S3FileSystem(endpoint_override=host, scheme=scheme, region="us-east-1")


def test_pyarrow_partitioned_write_dataset_read_and_denial(profile):
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    s3 = arrow_fs(profile)
    # create_dir=False: there are no folders in S3, and making one asks HeadBucket, which
    # needs s3:ListBucket on the whole bucket (the trainer may list only its own prefix).
    pq.write_to_dataset(table(), "checkpoints/alice/pyarrow/metrics", filesystem=s3, partition_cols=["split"], create_dir=False)
    got = ds.dataset("checkpoints/alice/pyarrow/metrics", filesystem=s3, partitioning="hive").to_table()
    assert sorted(got.column("step").to_pylist()) == [1, 2, 3, 4]
    shard = s3.open_input_file("datasets/imagenet/train/0001.tar").read()
    assert shard == b"demo training shard 0001\n"
    before = denials(profile, "s3://datasets/pii/users.csv")
    with pytest.raises(OSError, match="ACCESS_DENIED"):
        s3.open_input_file("datasets/pii/users.csv").read()
    assert denials(profile, "s3://datasets/pii/users.csv") > before, "the client's error was not claimgate's deny"
    sessions = [r for r in profile.audit() if "aws-sdk-cpp" in r.get("user_agent", "")]
    assert sessions and all(r["identity"]["auth_method"] == "sts_session" for r in sessions)


def test_pyarrow_across_session_expiries(short, monkeypatch):
    use(monkeypatch, short.profile_env())
    s3 = arrow_fs(short)
    across_expiries(short, lambda: s3.open_input_file("datasets/imagenet/train/0002.tar").read())


# --- Polars (object_store; credentials from `claimgate credentials` as a provider function) --


def claimgate_provider(dev):
    """The README's Polars provider: runs the helper, hands Polars the whole triplet and its
    expiry; Polars calls it again when they lapse. (Polars' CredentialProviderAWS reads the
    three values from a botocore RefreshableCredentials one property at a time, and botocore
    refreshes between the reads in a session's last 15 minutes: a key id with another
    session's token, refused as InvalidToken.)"""
    import datetime
    import json

    def provide():
        out = subprocess.run(
            [BIN, "credentials", "--endpoint", dev.url, "--role", "trainer", "--token-file", dev.token_file()],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        c = json.loads(out)
        expiry = datetime.datetime.fromisoformat(c["Expiration"].replace("Z", "+00:00"))
        creds = {
            "aws_access_key_id": c["AccessKeyId"],
            "aws_secret_access_key": c["SecretAccessKey"],
            "aws_session_token": c["SessionToken"],
        }
        return creds, int(expiry.timestamp())

    return provide


def polars_options(dev):
    options = {"aws_endpoint_url": dev.url, "aws_region": "us-east-1", "aws_allow_http": "true"}
    return options, claimgate_provider(dev)


def test_polars_write_read_and_denial(plain):
    import polars as pl

    options, creds = polars_options(plain)
    df = pl.DataFrame({"step": [1, 2, 3], "loss": [0.9, 0.5, 0.4]})
    df.write_parquet("s3://checkpoints/alice/polars/metrics.parquet", storage_options=options, credential_provider=creds)
    back = pl.read_parquet("s3://checkpoints/alice/polars/metrics.parquet", storage_options=options, credential_provider=creds)
    assert back.equals(df)
    sales = pl.read_csv("s3://datasets/curated/sales.csv", storage_options=options, credential_provider=creds)
    assert sales["revenue"].to_list() == [1200]
    before = denials(plain, "s3://datasets/pii/users.csv")
    with pytest.raises(PermissionError):
        pl.read_csv("s3://datasets/pii/users.csv", storage_options=options, credential_provider=creds)
    assert denials(plain, "s3://datasets/pii/users.csv") > before, "the client's error was not claimgate's deny"


def test_polars_across_session_expiries(short):
    import polars as pl

    options, creds = polars_options(short)
    across_expiries(
        short, lambda: pl.read_csv("s3://datasets/curated/sales.csv", storage_options=options, credential_provider=creds)
    )


# --- Lance (object_store through the AWS SDK's chain: the profile) ---------------------------


def lance_options(dev):
    return {"aws_endpoint": dev.url, "aws_region": "us-east-1", "allow_http": "true"}


def test_lance_write_read_and_denial(profile):
    import lance

    uri = "s3://checkpoints/alice/lance/metrics.lance"
    lance.write_dataset(table(), uri, storage_options=lance_options(profile), mode="overwrite")
    back = lance.dataset(uri, storage_options=lance_options(profile)).to_table()
    assert back.column("step").to_pylist() == [1, 2, 3, 4]
    before = denials(profile, "s3://datasets/pii/users.lance/")
    with pytest.raises(Exception) as e:
        lance.dataset("s3://datasets/pii/users.lance", storage_options=lance_options(profile)).to_table()
    assert "403" in str(e.value) or "ermission" in str(e.value) or "denied" in str(e.value).lower(), e.value
    assert denials(profile, "s3://datasets/pii/users.lance/") > before


def test_lance_across_session_expiries(short, monkeypatch):
    import lance

    use(monkeypatch, short.profile_env())
    uri = "s3://checkpoints/alice/lance/expiry.lance"
    lance.write_dataset(table(), uri, storage_options=lance_options(short), mode="overwrite")
    ds = lance.dataset(uri, storage_options=lance_options(short))  # one dataset, one store, all along
    across_expiries(short, lambda: ds.to_table())


# --- delta-rs (its AWS SDK chain, forced on: the profile's credential_process) -------------


def delta_options(dev):
    return {
        "AWS_ENDPOINT_URL": dev.url,
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
        # without it delta-rs leaves credentials to object_store, which reads no profile
        "AWS_FORCE_CREDENTIAL_LOAD": "true",
        # one writer per table here; a shared table needs a locking provider
        "AWS_S3_ALLOW_UNSAFE_RENAME": "true",
    }


def test_deltalake_write_read_and_denial(profile):
    import deltalake

    options = delta_options(profile)
    deltalake.write_deltalake("s3://checkpoints/alice/delta/metrics", table(), storage_options=options, mode="overwrite")
    back = deltalake.DeltaTable("s3://checkpoints/alice/delta/metrics", storage_options=options).to_pyarrow_table()
    assert sorted(back.column("step").to_pylist()) == [1, 2, 3, 4]
    before = denials(profile, "s3://datasets/pii/users/")
    with pytest.raises(Exception) as e:
        deltalake.DeltaTable("s3://datasets/pii/users", storage_options=options)
    assert "403" in str(e.value) or "ermission" in str(e.value) or "Forbidden" in str(e.value), e.value
    assert denials(profile, "s3://datasets/pii/users/") > before


def test_deltalake_across_session_expiries(short, monkeypatch):
    import deltalake

    use(monkeypatch, short.profile_env())
    uri = "s3://checkpoints/alice/delta/expiry"
    deltalake.write_deltalake(uri, table(), storage_options=delta_options(short), mode="overwrite")
    dt = deltalake.DeltaTable(uri, storage_options=delta_options(short))  # one table, one store, all along
    across_expiries(short, lambda: dt.to_pyarrow_table())


# --- Polars without a helper: object_store's own web identity, over TLS ----------------------
#
# object_store trades the token at AWS_ENDPOINT_URL_STS itself, but only over https:
# `claimgate dev --tls`, its certificate trusted through SSL_CERT_FILE. It asks for one-hour
# sessions (DurationSeconds=3600) and renews them ahead of expiry; a 3 s test session cannot
# be forced on it (claimgate, like STS, refuses a DurationSeconds above its maximum), so this
# path's run across expiries is the helper's, above.


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    d = Dev(tmp_path_factory.mktemp("clients-tls"), tls=True)
    yield d
    d.stop()


def test_polars_over_tls_without_a_helper(tls, monkeypatch):
    import polars as pl

    env = tls.env()
    env.update(SSL_CERT_FILE=tls.ca, AWS_REGION="us-east-1")
    use(monkeypatch, env)
    options = {"aws_endpoint_url": tls.url, "aws_region": "us-east-1"}
    df = pl.DataFrame({"step": [1, 2], "loss": [0.5, 0.4]})
    # credential_provider=None: object_store's own web identity (Polars' default goes through
    # botocore, see claimgate_provider above)
    df.write_parquet("s3://checkpoints/alice/polars/tls.parquet", storage_options=options, credential_provider=None)
    back = pl.read_parquet("s3://checkpoints/alice/polars/tls.parquet", storage_options=options, credential_provider=None)
    assert back.equals(df)
    before = denials(tls, "s3://datasets/pii/users.csv")
    with pytest.raises(PermissionError):
        pl.read_csv("s3://datasets/pii/users.csv", storage_options=options, credential_provider=None)
    assert denials(tls, "s3://datasets/pii/users.csv") > before
    sessions = [r for r in tls.audit() if r.get("resource") == "s3://checkpoints/alice/polars/tls.parquet"]
    assert sessions and all(r["identity"]["auth_method"] == "sts_session" for r in sessions)


# --- s3fs / fsspec (botocore's own web identity) ---------------------------------------------


def test_s3fs_write_read_and_denial(web_identity):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.pipe("checkpoints/alice/s3fs/notes.txt", b"epoch 3")
    assert fs.cat("checkpoints/alice/s3fs/notes.txt") == b"epoch 3"
    assert fs.cat("datasets/imagenet/train/0001.tar") == b"demo training shard 0001\n"
    before = denials(web_identity, "s3://datasets/pii/users.csv")
    with pytest.raises(PermissionError):
        fs.cat("datasets/pii/users.csv")
    assert denials(web_identity, "s3://datasets/pii/users.csv") > before, "the client's error was not claimgate's deny"


def test_s3fs_across_session_expiries(short, monkeypatch):
    import s3fs

    use(monkeypatch, short.env())
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    across_expiries(short, lambda: fs.cat("datasets/imagenet/train/0001.tar"))


# --- HuggingFace datasets (parquet from s3:// via fsspec) ------------------------------------


def test_hf_datasets_load_parquet_write_and_denial(web_identity, tmp_path, monkeypatch):
    import datasets
    import pyarrow.parquet as pq
    import s3fs

    fs = s3fs.S3FileSystem()
    buf = io.BytesIO()
    pq.write_table(table(), buf)
    fs.pipe("checkpoints/alice/hf/train.parquet", buf.getvalue())
    ds = datasets.load_dataset(
        "parquet",
        data_files={"train": "s3://checkpoints/alice/hf/train.parquet"},
        storage_options={},
        cache_dir=str(tmp_path / "hf"),
        split="train",
    )
    assert ds["step"] == [1, 2, 3, 4]
    # and a dataset written back through fsspec
    ds.to_parquet("s3://checkpoints/alice/hf/out.parquet", storage_options={})
    assert pq.read_table(io.BytesIO(fs.cat("checkpoints/alice/hf/out.parquet"))).num_rows == 4
    before = denials(web_identity, "s3://datasets/pii/users.csv")
    with pytest.raises(PermissionError):
        datasets.load_dataset("csv", data_files="s3://datasets/pii/users.csv", storage_options={}, cache_dir=str(tmp_path / "hf2"))
    assert denials(web_identity, "s3://datasets/pii/users.csv") > before, "the client's error was not claimgate's deny"


def test_hf_datasets_across_session_expiries(short, tmp_path, monkeypatch):
    import datasets
    import pyarrow.parquet as pq
    import s3fs

    use(monkeypatch, short.env())
    buf = io.BytesIO()
    pq.write_table(table(), buf)
    s3fs.S3FileSystem(skip_instance_cache=True).pipe("checkpoints/alice/hf/expiry.parquet", buf.getvalue())

    loads = iter(range(1000))

    def load():
        # a fresh cache each time, so every load reads from S3
        ds = datasets.load_dataset(
            "parquet",
            data_files="s3://checkpoints/alice/hf/expiry.parquet",
            # one filesystem for the whole loop (so its credentials must be refreshed), and
            # not the one an earlier test cached (another dev's endpoint and token)
            storage_options={"config_kwargs": {"user_agent_extra": "hf-expiry-test"}},
            cache_dir=str(tmp_path / f"hf-{next(loads)}"),
            split="train",
        )
        assert ds.num_rows == 4

    across_expiries(short, load)


# --- PyTorch DataLoader over an S3-backed dataset (fsspec) -----------------------------------


class Shards:
    """A map-style dataset of S3 objects. Each process (the main one, or a DataLoader
    worker) opens one filesystem and keeps it: its credentials live, and are refreshed,
    as long as the process."""

    def __init__(self, keys):
        self.keys = keys
        self._fs = None
        self._pid = None

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, i):
        import s3fs

        if self._pid != os.getpid():
            self._fs = s3fs.S3FileSystem(skip_instance_cache=True)
            self._pid = os.getpid()
        return self._fs.cat(self.keys[i])

    def __getstate__(self):
        # a worker opens its own filesystem (an aiobotocore client does not cross a fork)
        return {"keys": self.keys, "_fs": None, "_pid": None}


def test_torch_dataloader_reads_writes_and_is_denied(web_identity):
    import s3fs
    import torch
    from torch.utils.data import DataLoader

    fs = s3fs.S3FileSystem()
    weights = torch.arange(6, dtype=torch.float32)
    with fs.open("checkpoints/alice/torch/step-1.pt", "wb") as f:
        torch.save({"w": weights}, f)
    with fs.open("checkpoints/alice/torch/step-1.pt", "rb") as f:
        assert torch.equal(torch.load(f)["w"], weights)
    loader = DataLoader(
        Shards(["datasets/imagenet/train/0001.tar", "datasets/imagenet/train/0002.tar"]),
        batch_size=None,
        num_workers=2,
    )
    assert sorted(loader) == [b"demo training shard 0001\n", b"demo training shard 0002\n"]
    before = denials(web_identity, "s3://datasets/pii/users.csv")
    with pytest.raises(PermissionError):
        list(DataLoader(Shards(["datasets/pii/users.csv"]), batch_size=None, num_workers=0))
    assert denials(web_identity, "s3://datasets/pii/users.csv") > before, "the client's error was not claimgate's deny"


def test_torch_dataloader_across_session_expiries(short, monkeypatch):
    from torch.utils.data import DataLoader

    use(monkeypatch, short.env())
    # persistent workers keep their filesystems (and so must renew their credentials) across epochs
    loader = DataLoader(
        Shards(["datasets/imagenet/train/0001.tar"] * 2), batch_size=None, num_workers=2, persistent_workers=True
    )
    across_expiries(short, lambda: list(loader))


# --- s3torchconnector (the CRT client; credentials from the profile's credential_process) ----


def torch_s3(dev):
    from s3torchconnector import S3ClientConfig

    # path-style: the CRT would otherwise resolve <bucket>.<host>
    return {"region": "us-east-1", "endpoint": dev.url, "s3client_config": S3ClientConfig(force_path_style=True)}


def test_s3torchconnector_map_dataset_checkpoint_and_denial(profile):
    from s3torchconnector import S3Checkpoint, S3MapDataset
    from s3torchconnectorclient import S3Exception

    ds = S3MapDataset.from_prefix("s3://datasets/imagenet/train/", **torch_s3(profile))
    assert sorted(ds[i].read() for i in range(len(ds))) == [b"demo training shard 0001\n", b"demo training shard 0002\n"]
    checkpoint = S3Checkpoint(**torch_s3(profile))
    with checkpoint.writer("s3://checkpoints/alice/s3torch/step-1.ckpt") as w:
        w.write(b"weights v1")
    with checkpoint.reader("s3://checkpoints/alice/s3torch/step-1.ckpt") as r:
        assert r.read() == b"weights v1"
    before = denials(profile, "s3://datasets/pii/users.csv")
    with pytest.raises(S3Exception, match="Forbidden"):
        S3MapDataset.from_objects(["s3://datasets/pii/users.csv"], **torch_s3(profile))[0].read()
    assert denials(profile, "s3://datasets/pii/users.csv") > before, "the client's error was not claimgate's deny"


def test_s3torchconnector_across_session_expiries(short, monkeypatch):
    from s3torchconnector import S3MapDataset

    use(monkeypatch, short.profile_env())
    ds = S3MapDataset.from_objects(["s3://datasets/imagenet/train/0001.tar"], **torch_s3(short))
    across_expiries(short, lambda: ds[0].read())


# --- the helper itself -----------------------------------------------------------------------


def run_helper(dev, *extra, token_file=None, role="trainer"):
    return subprocess.run(
        [BIN, "credentials", "--endpoint", dev.url, "--role", role, "--token-file", token_file or dev.token_file(), *extra],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
    )


def test_helper_prints_credential_process_json_and_env_lines(plain):
    import json

    doc = json.loads(run_helper(plain, "--duration", "20m").stdout)
    assert doc["Version"] == 1 and doc["AccessKeyId"].startswith("ASIA")
    assert doc["SecretAccessKey"] and doc["SessionToken"]
    import datetime

    left = datetime.datetime.fromisoformat(doc["Expiration"].replace("Z", "+00:00")) - datetime.datetime.now(datetime.timezone.utc)
    assert 1150 <= left.total_seconds() <= 1200, left
    env = run_helper(plain, "--format", "env").stdout.splitlines()
    assert [line.split("=")[0] for line in env] == [
        "export AWS_ACCESS_KEY_ID",
        "export AWS_SECRET_ACCESS_KEY",
        "export AWS_SESSION_TOKEN",
        "export AWS_CREDENTIAL_EXPIRATION",
    ]
    issued = [r for r in plain.audit() if r.get("operation") == "AssumeRoleWithWebIdentity"]
    assert issued[-1]["identity"]["sub"] == "alice" and issued[-1]["decision"] == "allow"


def test_helper_fails_with_the_sts_reason_and_never_prints_the_token(plain, tmp_path):
    forged = tmp_path / "forged.jwt"
    token = plain.mint("alice", "groups=ml-engineers")
    head, claims, sig = token.split(".")
    token = ".".join([head, claims, sig[:-4] + ("AAAA" if not sig.endswith("AAAA") else "BBBB")])
    forged.write_text(token)
    r = run_helper(plain, token_file=str(forged))
    assert r.returncode == 1 and r.stdout == ""
    assert "InvalidIdentityToken" in r.stderr, r.stderr
    assert token not in r.stderr and token.split(".")[2] not in r.stderr
    # a role the caller does not hold: AccessDenied, said as the STS said it
    r = run_helper(plain, role="privacy-officer")
    assert r.returncode == 1 and "AccessDenied" in r.stderr, r.stderr
    # nothing listens there: a one-line reason naming the endpoint
    r = subprocess.run(
        [BIN, "credentials", "--endpoint", "http://127.0.0.1:9", "--role", "trainer", "--token-file", plain.token_file()],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "cannot reach the STS at http://127.0.0.1:9" in r.stderr, r.stderr


def test_boto3_through_the_printed_profile(profile):
    import boto3

    c = boto3.session.Session().client("s3", endpoint_url=profile.url)
    c.put_object(Bucket="checkpoints", Key="alice/profile/x.txt", Body=b"via credential_process")
    assert c.get_object(Bucket="checkpoints", Key="alice/profile/x.txt")["Body"].read() == b"via credential_process"
