"""A real Feast feature server behind claimgate's HTTP route.

The test builds a Feast repository (local registry, SQLite online store, one feature view
over a parquet file it writes), applies and materializes it with the `feast` CLI, and serves
it with `feast serve`. claimgate sits in front with a route whose service token comes from a
real OAuth server (client credentials, node-oidc-provider): no static key anywhere. A trainer
gets the features Feast computed; an analyst is refused by policy, and Feast never hears of
the refused call (its access log says so).
"""

import datetime
import json
import pathlib
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import Dev

from test_http_credentials import RESOURCE, AuthServer, issuer_of, serve
from test_route_credentials import free_port

FEAST = str(pathlib.Path(sys.executable).parent / "feast")

FEATURE_STORE = """\
project: ml
registry: registry.db
provider: local
online_store:
  type: sqlite
  path: online.db
entity_key_serialization_version: 3
"""

FEATURES = """\
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource
from feast.types import Float32, Int64

driver = Entity(name="driver", join_keys=["driver_id"])
source = FileSource(path="stats.parquet", timestamp_field="event_timestamp")
driver_stats = FeatureView(
    name="driver_stats",
    entities=[driver],
    ttl=timedelta(days=3650),
    schema=[Field(name="conv_rate", dtype=Float32), Field(name="trips", dtype=Int64)],
    source=source,
)
"""

QUERY = {"features": ["driver_stats:conv_rate", "driver_stats:trips"], "entities": {"driver_id": [1001, 1002]}}


class FeastServer:
    def __init__(self, tmp):
        import pandas as pd

        repo = tmp / "repo"
        repo.mkdir()
        (repo / "feature_store.yaml").write_text(FEATURE_STORE)
        (repo / "features.py").write_text(FEATURES)
        now = datetime.datetime.now(datetime.timezone.utc)
        pd.DataFrame(
            {"driver_id": [1001, 1002], "conv_rate": [0.25, 0.75], "trips": [10, 20], "event_timestamp": [now, now]}
        ).to_parquet(repo / "stats.parquet")
        subprocess.run([FEAST, "apply"], cwd=repo, check=True, capture_output=True)
        end = (now + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
        subprocess.run([FEAST, "materialize-incremental", end], cwd=repo, check=True, capture_output=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "feast.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [FEAST, "serve", "-h", "127.0.0.1", "-p", str(self.port), "--workers", "1"],
            cwd=repo,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=1)
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("feast serve did not come up:\n" + self.log_path.read_text())

    def online_feature_calls(self):
        return self.log_path.read_text().count('"POST /get-online-features')

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=20)
        self.log.close()


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    d = Dev(tmp_path_factory.mktemp("idp"), tls=False)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def feast(tmp_path_factory):
    f = FeastServer(tmp_path_factory.mktemp("feast"))
    yield f
    f.stop()


def ask(cg, token):
    req = urllib.request.Request(
        cg.url + "/features/get-online-features",
        data=json.dumps(QUERY).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_feast_answers_a_trainer_and_never_sees_a_denied_analyst(dev, feast, tmp_path):
    auth = AuthServer(issuer_of(dev), ttl=300)
    creds = (
        f'{{ kind = "oauth2_client_credentials", token_url = "{auth.url}/token", client_id = "claimgate", '
        f'client_secret = "file:client.secret", resource = "{RESOURCE}" }}'
    )
    cg = serve(tmp_path, dev, feast, creds)
    try:
        status, answer = ask(cg, dev.mint("alice", "groups=ml-engineers"))
        assert status == 200, answer
        names = answer["metadata"]["feature_names"]
        values = dict(zip(names, (r["values"] for r in answer["results"])))
        assert values["trips"] == [10, 20]
        assert values["conv_rate"] == pytest.approx([0.25, 0.75])
        assert all(s == "PRESENT" for r in answer["results"] for s in r["statuses"])
        seen = feast.online_feature_calls()
        assert seen >= 1

        status, problem = ask(cg, dev.mint("carol", "groups=analysts"))
        assert status == 403 and problem["code"] == "AccessDenied"
        time.sleep(0.5)
        assert feast.online_feature_calls() == seen, "the denied call reached Feast"
        records = [r for r in cg.audit() if r.get("route") == "features"]
        assert [(r["identity"]["sub"], r["decision"]) for r in records] == [("alice", "allow"), ("carol", "deny")]
    finally:
        cg.stop()
        auth.stop()
