"""`[audit] format = "ocsf"` checked against the real OCSF 1.3.0 schema, not claimgate's own list.

The schema is the official export of OCSF 1.3.0 (schema.ocsf.io/1.3.0/export/schema) as the
`ocsf-json-schema` package bundles it (`ocsf_json_schema/ocsf/1.3.0.json`): every class and
object with its attributes' requirement levels, types, enums and constraints, and the types
with their regexes and ranges. Each event is checked twice:

- by `OcsfValidator` below, which walks the export itself: the attributes the class (base
  event included) and each object it reaches require are there; every attribute present is
  defined where it stands (`unmapped` takes anything) with its type, array-ness, enum values,
  regex, length and range; objects' `at_least_one` / `just_one` constraints; the `*_id`
  siblings carry their enum captions (the OCSF server only warns about a sibling that does
  not, but claimgate's mapping promises the captions); `type_uid` = `class_uid` * 100 +
  `activity_id`;
- by the JSON Schema (draft 2020-12) that the same package generates from the export, run
  through `jsonschema`, so the walker is not the only judge.

The events are real: a `claimgate serve` with `format = "ocsf"` next to a `claimgate dev`
(whose IdP, STS sealing key, S3 store and policies it shares) answers an STS
AssumeRoleWithWebIdentity, an allowed GetObject, a denied one, a PutObject, a request with a bad
token, one with none, an HTTP route's POST and PATCH, a token whose `email` claim is not an
address, and a connection it refuses before a request could be read. The README's example
event is checked the same way, and broken events show that the validator does reject what
the schema forbids. Each failure names the attribute, what the schema expects and what the
event holds (and, as a hint, the later OCSF release that would accept it, if any).
"""

import copy
import functools
import json
import re
import socket
import subprocess
import time
import tomllib
import urllib.error
import urllib.request

import boto3
import jsonschema
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema, get_packaged_versions

from conftest import BIN, ROOT, TRAINER, Dev

VERSION = "1.3.0"
EXPORT = get_ocsf_schema(version=VERSION)

# The export's own base types; every other type names one of these as its `type`.
BASE_TYPES = {"string_t", "integer_t", "long_t", "float_t", "boolean_t", "json_t", "object_t"}
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


def kind(v):
    return "null" if v is None else type(v).__name__


def release(v):
    return tuple(map(int, v.split(".")))


@functools.cache
def packaged(version):
    return get_ocsf_schema(version=version)


def since(section, name, attribute, value=None):
    """The first later OCSF release the package holds that defines `attribute` of `name`
    (with `value` in its enum): a hint for whoever fixes a violation."""
    later = sorted((v for v in get_packaged_versions() if re.fullmatch(r"\d+\.\d+\.\d+", v)), key=release)
    for v in (v for v in later if release(v) > release(VERSION)):
        a = packaged(v).get(section, {}).get(name, {}).get("attributes", {}).get(attribute)
        if a and (value is None or str(value) in a.get("enum", {})):
            return f" (OCSF {v} added it)"
    return ""


class OcsfValidator:
    """An event against one version of the OCSF export: a list of problems, empty when valid."""

    def __init__(self, export):
        self.export = export
        self.types = export["types"]
        self.objects = export["objects"]
        self.classes = {c["uid"]: c for c in export["classes"].values()}

    def problems(self, event):
        out = []
        if not isinstance(event, dict):
            return [f"/: expected an event object, got {kind(event)}"]
        cls = self.classes.get(event.get("class_uid"))
        if cls is None:
            return [f"class_uid: expected a class of OCSF {self.export['version']}, got {event.get('class_uid')!r}"]
        profiles = event.get("metadata", {}).get("profiles") or []
        profiles = [p for p in profiles if isinstance(p, str)] if isinstance(profiles, list) else []
        self._object("", event, cls, cls["name"], profiles, out, section="classes")
        self._classification(event, cls, out)
        return out

    # ---- objects and attributes

    def _object(self, path, value, definition, name, profiles, out, section="objects"):
        where = path or "/"
        if not isinstance(value, dict):
            out.append(f"{where}: expected object {name}, got {kind(value)} {value!r}")
            return
        attributes = definition.get("attributes", {})
        if name == "object" and not attributes:
            return  # the generic object (`unmapped`): whatever the source had
        active = {n: a for n, a in attributes.items() if a.get("profile") in (None, *profiles)}
        for n, a in sorted(active.items()):
            if a.get("requirement") == "required" and value.get(n) is None:
                out.append(f"{path + '.' if path else ''}{n}: required by {name}, missing")
        for n, v in value.items():
            p = f"{path}.{n}" if path else n
            if n in active:
                self._attribute(p, v, active[n], profiles, out, (section, name, n))
            elif n in attributes:
                out.append(
                    f"{p}: attribute of profile {attributes[n]['profile']!r}, which metadata.profiles does not declare"
                )
            else:
                out.append(f"{p}: not an attribute of {name} in OCSF {self.export['version']}{since(section, name, n)}")
        constraints = definition.get("constraints", {})
        present = lambda keys: [k for k in keys if value.get(k) is not None]
        if (keys := constraints.get("at_least_one")) and not present(keys):
            out.append(f"{where}: {name} needs at least one of {keys}, has none")
        if (keys := constraints.get("just_one")) and len(present(keys)) != 1:
            out.append(f"{where}: {name} needs exactly one of {keys}, has {present(keys)}")
        # an enum attribute's sibling holds the caption of its value (99 Other: the source's own)
        for n, a in active.items():
            sibling = a.get("sibling")
            if "enum" in a and sibling and n in value and isinstance(value.get(sibling), str):
                caption = a["enum"].get(str(value[n]), {}).get("caption")
                if caption and value[n] != 99 and value[sibling] != caption:
                    p = f"{path}.{sibling}" if path else sibling
                    out.append(f"{p}: expected {caption!r} (the caption of {n} = {value[n]}), got {value[sibling]!r}")

    def _attribute(self, path, value, attr, profiles, out, where):
        if attr.get("is_array"):
            if not isinstance(value, list):
                out.append(f"{path}: expected an array of {attr.get('object_type') or attr['type']}, got {kind(value)}")
                return
            for i, item in enumerate(value):
                self._value(f"{path}[{i}]", item, attr, profiles, out, where)
        else:
            self._value(path, value, attr, profiles, out, where)

    def _value(self, path, value, attr, profiles, out, where):
        t = attr["type"]
        if t == "object_t":
            name = attr["object_type"]
            self._object(path, value, self.objects[name], name, profiles, out)
            return
        tdef = self.types[t]
        base = t
        while base not in BASE_TYPES:  # timestamp_t -> long_t, port_t -> integer_t, ...
            base = self.types[base]["type"]
        named = t if t == base else f"{t} ({base})"
        fail = lambda: out.append(f"{path}: expected {named}, got {kind(value)} {value!r}")
        if base == "json_t":
            return
        if base == "string_t":
            if not isinstance(value, str):
                return fail()
            for limit in (tdef.get("max_len"), self.types["string_t"].get("max_len")):
                if limit and len(value) > limit:
                    out.append(f"{path}: {t} at most {limit} characters, got {len(value)}")
            if (rx := tdef.get("regex")) and not re.search(rx, value):
                out.append(f"{path}: {value!r} does not match the {t} pattern")
        elif base in ("integer_t", "long_t"):
            if not isinstance(value, int) or isinstance(value, bool):
                return fail()
            lo, hi = tdef.get("range") or (INT32 if base == "integer_t" else INT64)
            if not lo <= value <= hi:
                out.append(f"{path}: {t} within [{lo}, {hi}], got {value}")
        elif base == "float_t":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                return fail()
        elif base == "boolean_t":
            if not isinstance(value, bool):
                return fail()
        else:
            raise AssertionError(f"type {t} of {path}: base {base} unknown to this validator")
        if "enum" in attr and str(value) not in attr["enum"]:
            out.append(
                f"{path}: expected one of {sorted(attr['enum'], key=str)} ({named} enum), got {value!r}"
                + since(*where, value=value)
            )

    # ---- the class's identity

    def _classification(self, event, cls, out):
        uid, activity = event.get("class_uid"), event.get("activity_id")
        if event.get("category_uid") != cls["category_uid"]:
            out.append(f"category_uid: expected {cls['category_uid']} for class {uid}, got {event.get('category_uid')!r}")
        if isinstance(activity, int) and event.get("type_uid") != uid * 100 + activity:
            out.append(f"type_uid: expected class_uid * 100 + activity_id = {uid * 100 + activity}, got {event.get('type_uid')!r}")
        names = {
            "class_name": cls["caption"],
            "category_name": cls["category_name"],
            "activity_name": cls["attributes"]["activity_id"]["enum"].get(str(activity), {}).get("caption"),
            "type_name": cls["attributes"]["type_uid"]["enum"].get(str(event.get("type_uid")), {}).get("caption"),
        }
        for n, expected in names.items():
            # 99 Other: the name is the source's own
            if n in event and expected and activity != 99 and event[n] != expected:
                out.append(f"{n}: expected {expected!r}, got {event[n]!r}")
        if event.get("metadata", {}).get("version") not in (None, self.export["version"]):
            out.append(f"metadata.version: expected {self.export['version']!r}, got {event['metadata']['version']!r}")


VALIDATOR = OcsfValidator(EXPORT)
GENERATOR = OcsfJsonSchemaEmbedded(EXPORT)


def json_schema_problems(event):
    """The package's own JSON Schema for the event's class, under `jsonschema`."""
    name = GENERATOR.lookup_class_name_from_uid(class_uid=event["class_uid"])
    profiles = event.get("metadata", {}).get("profiles") or []
    schema = GENERATOR.get_class_schema(class_name=name, profiles=profiles)
    validator = jsonschema.Draft202012Validator(schema)
    return sorted(
        f"{'.'.join(map(str, e.absolute_path)) or '/'}: {e.message}" for e in validator.iter_errors(event)
    )


def assert_valid(event, what):
    walker, schema = VALIDATOR.problems(event), json_schema_problems(event)
    assert not walker and not schema, (
        f"{what} is not a valid OCSF {VERSION} API Activity event:\n"
        + "".join(f"  {p}\n" for p in walker)
        + ("  JSON Schema:\n" + "".join(f"    {p}\n" for p in schema) if schema else "")
        + json.dumps(event, indent=1, sort_keys=True)
    )


# ---------------------------------------------------------------- the schema itself


def test_the_bundled_schema_is_the_official_1_3_0_api_activity():
    assert EXPORT["version"] == VERSION
    api = EXPORT["classes"]["api_activity"]
    assert (api["uid"], api["category_uid"], api["caption"]) == (6003, 6, "API Activity")
    # the class carries the base event's attributes, and requires at least what it requires
    base = EXPORT["base_event"]["attributes"]
    assert set(base) <= set(api["attributes"])
    required = lambda attrs: {n for n, a in attrs.items() if a.get("requirement") == "required" and not a.get("profile")}
    assert required(base) <= required(api["attributes"])
    assert required(api["attributes"]) == {
        "activity_id", "actor", "api", "category_uid", "class_uid", "metadata",
        "severity_id", "src_endpoint", "time", "type_uid",
    }
    assert required(EXPORT["objects"]["metadata"]["attributes"]) == {"product", "version"}
    assert required(EXPORT["objects"]["api"]["attributes"]) == {"operation"}
    # every object claimgate's events reach is defined
    for o in ("actor", "user", "api", "metadata", "product", "network_endpoint", "http_request",
              "url", "resource_details", "authorization", "policy", "idp",
              "session", "group", "request", "response", "service"):
        assert EXPORT["objects"][o]["attributes"], o


# ---------------------------------------------------------------- claimgate's events


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url, method="GET", headers=None, data=None):
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


class OcsfServe:
    """`claimgate serve` on `claimgate dev`'s own config, with `[audit] format = "ocsf"`."""

    def __init__(self, dev):
        text = (dev.dir / "claimgate.toml").read_text()
        config = tomllib.loads(text)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.audit_path = dev.dir / "ocsf-audit.log"
        ocsf = text.replace(f'"{config["server"]["listen"]}"', f'"127.0.0.1:{self.port}"')
        ocsf = ocsf.replace(f'"{config["admin"]["listen"]}"', f'"127.0.0.1:{free_port()}"')
        ocsf = ocsf.replace('[audit]\npath = "audit.log"\n', '[audit]\npath = "ocsf-audit.log"\nformat = "ocsf"\n')
        assert tomllib.loads(ocsf)["audit"] == {"path": "ocsf-audit.log", "format": "ocsf"}, ocsf
        (dev.dir / "ocsf.toml").write_text(ocsf)
        self.log = open(dev.dir / "ocsf-serve.log", "w")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--config", str(dev.dir / "ocsf.toml")], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("claimgate serve did not start:\n" + (dev.dir / "ocsf-serve.log").read_text())
                time.sleep(0.1)

    def events(self):
        time.sleep(0.3)
        return [json.loads(l) for l in self.audit_path.read_text().splitlines()]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=20)
        self.log.close()


CASES = [
    "sts_assume_role_with_web_identity",
    "allowed_get_object",
    "denied_get_object",
    "put_object",
    "bad_token",
    "no_token",
    "http_route_post",
    "http_route_patch",
    "email_claim_not_an_address",
    "header_too_large",
]


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    """Each case's request, and the event claimgate wrote for it (by request id)."""
    dev = Dev(tmp_path_factory.mktemp("ocsf"), tls=False)
    cg = OcsfServe(dev)
    try:
        ids = {}
        alice = (dev.dir / "tokens" / "alice.jwt").read_text().strip()
        sts = boto3.client("sts", endpoint_url=cg.url, region_name="us-east-1")
        r = sts.assume_role_with_web_identity(RoleArn=TRAINER, RoleSessionName="ocsf", WebIdentityToken=alice)
        ids["sts_assume_role_with_web_identity"] = r["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
        c = r["Credentials"]
        s3 = boto3.client(
            "s3",
            endpoint_url=cg.url,
            region_name="us-east-1",
            aws_access_key_id=c["AccessKeyId"],
            aws_secret_access_key=c["SecretAccessKey"],
            aws_session_token=c["SessionToken"],
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )
        r = s3.get_object(Bucket="datasets", Key="imagenet/train/0001.tar")
        assert r["Body"].read() == b"demo training shard 0001\n"
        ids["allowed_get_object"] = r["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
        with pytest.raises(ClientError) as denied:
            s3.get_object(Bucket="datasets", Key="pii/users.csv")
        assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        ids["denied_get_object"] = denied.value.response["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
        r = s3.put_object(Bucket="checkpoints", Key="alice/ocsf/step-1.pt", Body=b"weights")
        ids["put_object"] = r["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]

        status, headers, _ = request(
            cg.url + "/datasets/imagenet/train/0001.tar", headers={"Authorization": "Bearer not.a.jwt"}
        )
        assert status == 400, status  # S3's InvalidToken
        ids["bad_token"] = headers["x-amz-request-id"]
        status, headers, _ = request(cg.url + "/datasets/imagenet/train/0001.tar")
        assert status == 403, status  # S3's AccessDenied
        ids["no_token"] = headers["x-amz-request-id"]
        status, headers, _ = request(
            cg.url + "/features/get-online-features",
            method="POST",
            headers={
                "Authorization": f"Bearer {alice}",
                "Content-Type": "application/json",
                # a W3C trace, so metadata.correlation_uid is there too
                "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            },
            data=b'{"features": ["driver_hourly_stats:conv_rate"], "entities": {"driver_id": [1001]}}',
        )
        assert status == 200, status
        ids["http_route_post"] = headers["x-amz-request-id"]
        # a method the route passes on but alice's role does not allow: refused, and recorded
        status, headers, _ = request(
            cg.url + "/features/get-online-features",
            method="PATCH",
            headers={"Authorization": f"Bearer {alice}", "Content-Type": "application/json"},
            data=b"{}",
        )
        assert status == 403, status
        ids["http_route_patch"] = headers["x-amz-request-id"]
        # an IdP whose `email` claim is not an address (claimgate passes claims on as they are)
        eve = dev.mint("eve", "email=eve", "groups=ml-engineers")
        status, headers, _ = request(
            cg.url + "/datasets/imagenet/train/0001.tar", headers={"Authorization": f"Bearer {eve}"}
        )
        assert status == 200, status
        ids["email_claim_not_an_address"] = headers["x-amz-request-id"]

        # a request head too large to read: refused before there is a request (route, method `-`)
        with socket.create_connection(("127.0.0.1", cg.port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
            try:
                s.recv(4096)
            except OSError:
                pass

        events = cg.events()
        by_id = {e.get("metadata", {}).get("uid"): e for e in events}
        found = {case: by_id.get(rid) for case, rid in ids.items()}
        found["header_too_large"] = next(
            (e for e in events if e.get("unmapped", {}).get("reason") == "header_too_large"), None
        )
        missing = [case for case, e in found.items() if e is None]
        assert not missing, f"no event for {missing} in {cg.audit_path}:\n" + "\n".join(map(json.dumps, events))
        yield found
    finally:
        cg.stop()
        dev.stop()


@pytest.mark.parametrize("case", CASES)
def test_claimgate_events_are_valid_ocsf_1_3_0(events, case):
    assert_valid(events[case], f"claimgate's event for {case}")


def test_the_events_say_what_happened(events):
    """The mapping the README promises, on the live events (so the schema check is not vacuous)."""
    now_ms = time.time() * 1000
    for case, e in events.items():
        assert (e["class_uid"], e["category_uid"], e["metadata"]["version"]) == (6003, 6, VERSION), case
        assert now_ms - 600_000 < e["time"] <= now_ms + 1000, f"{case}: time is not epoch milliseconds: {e['time']}"
    ops = {case: e["api"]["operation"] for case, e in events.items()}
    assert ops["sts_assume_role_with_web_identity"] == "AssumeRoleWithWebIdentity"
    assert ops["allowed_get_object"] == ops["denied_get_object"] == "GetObject"
    assert ops["put_object"] == "PutObject"
    assert [events[c]["activity_id"] for c in ("allowed_get_object", "put_object", "sts_assume_role_with_web_identity")] == [2, 1, 1]
    assert [events[c]["status_id"] for c in ("allowed_get_object", "denied_get_object", "bad_token")] == [1, 2, 2]
    assert events["denied_get_object"]["actor"]["authorizations"][0]["decision"] == "deny"
    assert events["denied_get_object"]["severity_id"] == 2
    assert events["allowed_get_object"]["actor"]["user"]["uid"] == "alice"
    assert events["allowed_get_object"]["actor"]["session"]["uid"]  # the STS session's key id
    assert events["allowed_get_object"]["resources"][0]["uid"] == "s3://datasets/imagenet/train/0001.tar"
    assert events["bad_token"]["actor"]["user"]["name"] == "unauthenticated"
    assert events["http_route_post"]["metadata"]["correlation_uid"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert events["header_too_large"]["status_code"] == "431"
    # values outside OCSF 1.3.0's types are kept, in `unmapped`, not put where they would
    # make the event invalid: PATCH (an http_method only from 1.6.0), a connection refused
    # before its method was read, an email claim that is no address
    assert "http_method" not in events["http_route_patch"]["http_request"]
    assert events["http_route_patch"]["unmapped"]["http_method"] == "PATCH"
    assert events["http_route_post"]["http_request"]["http_method"] == "POST"
    assert events["header_too_large"]["unmapped"]["http_method"] == "-"
    assert events["email_claim_not_an_address"]["actor"]["user"]["uid"] == "eve"
    assert "email_addr" not in events["email_claim_not_an_address"]["actor"]["user"]
    assert events["email_claim_not_an_address"]["unmapped"]["email"] == "eve"
    assert events["allowed_get_object"]["actor"]["user"]["email_addr"].endswith("@example.com")
    # and nothing the class does not define, http_response (1.4.0+) above all
    assert all("http_response" not in e for e in events.values())


# ---------------------------------------------------------------- the README's example


def readme_example():
    text = (ROOT / "README.md").read_text()
    section = text.split("### OCSF, for SIEMs and Amazon Security Lake", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```json\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the README's OCSF section should hold one example event"
    return json.loads(blocks[0])


def test_the_readme_example_is_valid_ocsf_1_3_0():
    assert_valid(readme_example(), "the README's example event")


# ---------------------------------------------------------------- the validator can say no


BROKEN = {
    "metadata.version missing": (
        lambda e: e["metadata"].pop("version"),
        "metadata.version: required by metadata, missing",
        "metadata: 'version' is a required property",
    ),
    "status_id of the wrong type": (
        lambda e: e.__setitem__("status_id", "2"),
        "status_id: expected integer_t, got str '2'",
        "status_id: '2' is not of type 'integer'",
    ),
    "an attribute the class does not define": (
        lambda e: e.__setitem__("bucket", "datasets"),
        "bucket: not an attribute of api_activity in OCSF 1.3.0",
        "/: Additional properties are not allowed ('bucket' was unexpected)",
    ),
    "an attribute an object does not define": (
        lambda e: e["actor"]["user"].__setitem__("login", "alice"),
        "actor.user.login: not an attribute of user in OCSF 1.3.0",
        "actor.user: Additional properties are not allowed ('login' was unexpected)",
    ),
    "severity_id outside its enum": (
        lambda e: e.__setitem__("severity_id", 7),
        "severity_id: expected one of",
        "severity_id: 7 is not one of",
    ),
    "type_uid not class_uid * 100 + activity_id": (
        lambda e: e.__setitem__("type_uid", 600301),
        "type_uid: expected class_uid * 100 + activity_id = 600302, got 600301",
        None,  # JSON Schema cannot relate two attributes: the walker's own check
    ),
    "api.operation missing": (
        lambda e: e["api"].pop("operation"),
        "api.operation: required by api, missing",
        "api: 'operation' is a required property",
    ),
    "a port out of range": (
        lambda e: e["src_endpoint"].__setitem__("port", 70000),
        "src_endpoint.port: port_t within [0, 65535], got 70000",
        "src_endpoint.port: 70000 is greater than the maximum of 65535",
    ),
    "an ip that is not one": (
        lambda e: e["src_endpoint"].__setitem__("ip", "10.0.3"),
        "src_endpoint.ip: '10.0.3' does not match the ip_t pattern",
        "src_endpoint.ip: '10.0.3' does not match",
    ),
    "resources not an array": (
        lambda e: e.__setitem__("resources", e["resources"][0]),
        "resources: expected an array of resource_details, got dict",
        "resources: {",
    ),
    "a cloud profile attribute without the profile": (
        lambda e: e.__setitem__("cloud", {"provider": "AWS"}),
        "cloud: attribute of profile 'cloud', which metadata.profiles does not declare",
        "/: Additional properties are not allowed ('cloud' was unexpected)",
    ),
    "status that is not status_id's caption": (
        lambda e: e.__setitem__("status", "Success"),
        "status: expected 'Failure' (the caption of status_id = 2), got 'Success'",
        None,
    ),
}


def valid_event():
    """The README's example, less what OCSF 1.3.0 API Activity does not define (`http_response`
    came to the class in 1.4.0): a valid base, so that each defect below is the only one. The
    README's own example is judged as it stands by test_the_readme_example_is_valid_ocsf_1_3_0."""
    event = readme_example()
    event.pop("http_response", None)
    assert not VALIDATOR.problems(event) and not json_schema_problems(event)
    return event


@pytest.mark.parametrize("defect", list(BROKEN))
def test_a_broken_event_is_rejected(defect):
    event = valid_event()
    breaks, walker_says, schema_says = BROKEN[defect]
    broken = copy.deepcopy(event)
    breaks(broken)
    walker = VALIDATOR.problems(broken)
    assert any(p.startswith(walker_says) for p in walker), walker
    if schema_says:
        schema = json_schema_problems(broken)
        assert any(p.startswith(schema_says) for p in schema), schema


def test_all_three_defects_at_once_are_each_named():
    event = valid_event()
    del event["metadata"]["version"]
    event["status_id"] = "2"
    event["actor"]["user"]["login"] = "alice"
    walker = VALIDATOR.problems(event)
    assert "metadata.version: required by metadata, missing" in walker, walker
    assert "status_id: expected integer_t, got str '2'" in walker, walker
    assert "actor.user.login: not an attribute of user in OCSF 1.3.0" in walker, walker
    with pytest.raises(AssertionError, match="not a valid OCSF 1.3.0"):
        assert_valid(event, "the broken event")
