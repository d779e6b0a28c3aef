"""claimgate on Kubernetes: the plain manifests (deploy/kubernetes, rendered by `kubectl
kustomize`) and the Helm chart (deploy/helm/claimgate).

What is checked, on every rendering at hand (kustomize always; `helm template` when a `helm`
binary is on PATH or named by $HELM_BIN):
  - every object against the Kubernetes API schemas (PyPI kubernetes-validate, strict: unknown
    fields are errors) for the oldest Kubernetes the manifests claim (1.30, for the preStop
    `sleep` action) and 1.32. The ServiceMonitor is a CRD, for which kubernetes-validate has no
    schema: it is checked against a small JSON schema of our own (required fields and the
    fields we use, nothing else allowed) — not the operator's full CRD schema;
  - the conventions: the standard labels on every object and on the pods, the security
    context, probes on /healthz and /readyz on the admin port, resources, no subPath anywhere,
    config/policies/revocations/secrets each mounted as a whole directory of its own, replicas
    >= 2 (through the HPA), the PDB/HPA/Service pointing at the Deployment's pods, Service and
    container ports agreeing with each other and with the config's listen addresses, a grace
    period longer than the config's shutdown_grace;
  - the config set itself: claimgate.toml and the policies taken out of the rendered
    ConfigMaps, laid out in a temp dir as the kubelet lays out the pod's volumes (..data
    symlinks), the Secret's keys filled with fresh keys, and `claimgate validate` run with the
    container's own arguments: it must pass; a broken policy, revocation list or sealing key
    must make it fail.

The chart is also checked statically (test_chart_*): Chart.yaml and values.yaml
parse and hold what the templates need, every `include` names a `define`, template delimiters
and blocks balance, every `.Values.x` a template reads exists in values.yaml, no subPath or
checksum annotation, and the chart's default config, revocation list and policies are the very
files the plain manifests render, and its default values equal the plain manifests' settings.
That does not show that the templates render, nor what they render: `helm template`
(test_helm_*) does, and checks that the default rendering equals the plain manifests object for
object. Those tests fail without helm: scripts/test installs it (deploy/helm/install-tools.sh).
"""

import base64
import copy
import json
import os
import pathlib
import re
import secrets
import shutil
import subprocess
import tomllib

import jsonschema
import kubernetes_validate.utils as kv
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
PLAIN = ROOT / "deploy" / "kubernetes"
CHART = ROOT / "deploy" / "helm" / "claimgate"
BIN = os.environ.get("CLAIMGATE_BIN", str(ROOT / "target" / "debug" / "claimgate"))
HELM = os.environ.get("HELM_BIN") or shutil.which("helm")
KUBE_VERSIONS = ("1.30", "1.32")
POD_ETC = "/etc/claimgate"
CONFIG_PATH = "/etc/claimgate/config/claimgate.toml"
LABEL_KEYS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# The whole directories the pod mounts, one volume each, and what claimgate reads there.
MOUNTS = {
    "/etc/claimgate/config": "configMap",
    "/etc/claimgate/policies": "configMap",
    "/etc/claimgate/revocations": "configMap",
    "/etc/claimgate/secrets": "secret",
}
SECRET_REF = re.compile(r"file:/etc/claimgate/secrets/([-._A-Za-z0-9]+)")


# --------------------------------------------------------------------------------------------
# Rendering


def kubectl():
    path = shutil.which("kubectl")
    if not path:
        pytest.fail("kubectl is not on PATH: it renders deploy/kubernetes (kubectl kustomize)")
    return path


def load_docs(text):
    return [d for d in yaml.safe_load_all(text) if d]


def kustomize(directory):
    r = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True)
    assert r.returncode == 0, f"kubectl kustomize {directory} failed:\n{r.stderr}"
    return load_docs(r.stdout)


def helm(*args, check=True):
    r = subprocess.run([HELM, *args], capture_output=True, text=True)
    if check:
        assert r.returncode == 0, f"helm {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r


def fresh_key():
    return base64.b64encode(secrets.token_bytes(32)).decode()


def secret_values(keys):
    """What an operator puts in the Secret: fresh 32-byte keys, an opaque client secret."""
    return {k: fresh_key() if "key" in k else "example-" + secrets.token_hex(8) for k in keys}


class Bundle:
    """One rendering: its objects, and the pieces the tests look at."""

    def __init__(self, source, objects, secret=None):
        self.source = source
        self.objects = objects
        # The Secret the pods mount (kustomize: the example, not rendered; helm: rendered).
        self.secret = secret

    @property
    def with_secret(self):
        """The objects and the Secret the pods mount, once."""
        return self.objects + [s for s in [self.secret] if s is not None and s not in self.objects]

    def of(self, kind):
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind):
        found = self.of(kind)
        assert len(found) == 1, f"{self.source}: {len(found)} {kind} objects"
        return found[0]

    def configmap(self, name):
        found = [o for o in self.of("ConfigMap") if o["metadata"]["name"] == name]
        assert found, f"{self.source}: no ConfigMap {name}"
        return found[0]

    @property
    def deployment(self):
        return self.one("Deployment")

    @property
    def pod(self):
        return self.deployment["spec"]["template"]

    @property
    def container(self):
        containers = self.pod["spec"]["containers"]
        assert [c["name"] for c in containers] == ["claimgate"]
        return containers[0]

    def volume_for(self, mount_path):
        mounts = {m["mountPath"]: m for m in self.container["volumeMounts"]}
        assert mount_path in mounts, f"{self.source}: nothing mounted at {mount_path}"
        volumes = {v["name"]: v for v in self.pod["spec"]["volumes"]}
        return mounts[mount_path], volumes[mounts[mount_path]["name"]]

    def config_text(self):
        args = self.container["args"]
        assert args[:2] == ["serve", "--config"] and len(args) == 3, args
        path = pathlib.PurePosixPath(args[2])
        _, vol = self.volume_for(str(path.parent))
        return self.configmap(vol["configMap"]["name"])["data"][path.name]

    def config(self):
        return tomllib.loads(self.config_text())

    def secret_data(self):
        s = self.secret
        if "data" in s:
            return {k: base64.b64decode(v).decode() for k, v in s["data"].items()}
        return dict(s.get("stringData", {}))


def plain_secret_example():
    docs = load_docs((PLAIN / "secret.example.yaml").read_text())
    assert len(docs) == 1 and docs[0]["kind"] == "Secret"
    return docs[0]


@pytest.fixture(scope="module")
def plain():
    """deploy/kubernetes as `kubectl apply -k` takes it (the defaults: no optional parts)."""
    return Bundle("kustomize", kustomize(PLAIN), plain_secret_example())


@pytest.fixture(scope="module")
def plain_full(tmp_path_factory):
    """deploy/kubernetes with its optional components (ServiceMonitor, Ingress) switched on,
    as a user would: a copy whose kustomization lists them."""
    copy_dir = tmp_path_factory.mktemp("kustomize") / "kubernetes"
    shutil.copytree(PLAIN, copy_dir)
    components = sorted(p.name for p in (PLAIN / "components").iterdir() if p.is_dir())
    assert components == ["ingress", "servicemonitor"], components
    k = copy_dir / "kustomization.yaml"
    k.write_text(
        k.read_text() + "components:\n" + "".join(f"  - components/{c}\n" for c in components)
    )
    return Bundle("kustomize+components", kustomize(copy_dir), plain_secret_example())


def helm_values_file(tmp, extra=None):
    """The chart's defaults, plus a Secret rendered from values (fresh keys), and `extra`."""
    keys = sorted(set(SECRET_REF.findall((CHART / "files" / "claimgate.toml").read_text())))
    vals = secret_values(keys)
    sealing = [vals[k] for k in sorted(k for k in keys if k.startswith("sealing-key-"))]
    downstream = {k: v for k, v in vals.items() if not k.startswith("sealing-key-") and k != "upload-id-key"}
    values = {
        "secret": {
            "create": True,
            "sealingKeys": sealing,
            "uploadIdKey": vals["upload-id-key"],
            "downstream": downstream,
        }
    }
    for k, v in (extra or {}).items():
        values[k] = v
    path = tmp / f"values-{secrets.token_hex(4)}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def helm_render(tmp, extra=None, *more):
    r = helm(
        "template", "claimgate", str(CHART), "--namespace", "claimgate",
        "--values", str(helm_values_file(tmp, extra)), *more,
    )
    objects = load_docs(r.stdout)
    secret = [o for o in objects if o["kind"] == "Secret"]
    assert len(secret) == 1, "the chart rendered no Secret with secret.create=true"
    return Bundle("helm", objects, secret[0])


@pytest.fixture(scope="module")
def helm_full(tmp_path_factory):
    if not HELM:
        pytest.fail("helm is not on PATH (nor $HELM_BIN): scripts/test installs it with deploy/helm/install-tools.sh")
    extra = {"serviceMonitor": {"enabled": True}, "ingress": {"enabled": True}}
    return helm_render(tmp_path_factory.mktemp("helm"), extra)


@pytest.fixture(scope="module", params=["kustomize", "helm"])
def bundle(request):
    """Every rendering with all its parts: the plain manifests with their components, and
    the chart with serviceMonitor and ingress on (when helm is at hand)."""
    name = "plain_full" if request.param == "kustomize" else "helm_full"
    return request.getfixturevalue(name)


# --------------------------------------------------------------------------------------------
# Schemas

# The Prometheus Operator's ServiceMonitor (monitoring.coreos.com/v1), as far as we use it:
# the fields it requires and the ones this repository sets; anything else is refused, so a
# typo fails here as kubernetes-validate's strict mode fails it for built-in kinds.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "minProperties": 1,
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "minProperties": 1,
                            "additionalProperties": {"type": "string"},
                        },
                    },
                },
                "namespaceSelector": {"type": "object"},
                "jobLabel": {"type": "string"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}],
                        "properties": {
                            "port": {"type": "string", "minLength": 1},
                            "targetPort": {"type": ["string", "integer"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": r"^(0|(([0-9]+)(ms|s|m|h))+)$"},
                            "scrapeTimeout": {"type": "string", "pattern": r"^(0|(([0-9]+)(ms|s|m|h))+)$"},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array"},
                            "metricRelabelings": {"type": "array"},
                        },
                    },
                },
            },
        },
    },
}


def schema_problems(obj):
    """Problems of one object, against every Kubernetes version we claim."""
    name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if obj.get("kind") == "ServiceMonitor":
        v = jsonschema.Draft202012Validator(SERVICE_MONITOR_SCHEMA)
        return [f"{name}: {'.'.join(map(str, e.path))}: {e.message}" for e in v.iter_errors(obj)]
    problems = []
    for version in KUBE_VERSIONS:
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as e:
            problems.append(f"{name} (Kubernetes {version}): {'.'.join(map(str, e.path))}: {e.message}")
        except kv.SchemaNotFoundError as e:
            problems.append(f"{name}: {e.message} (a CRD this test has no schema for)")
    return problems


def test_every_object_matches_the_kubernetes_schemas(bundle):
    objects = bundle.with_secret
    kinds = sorted(o["kind"] for o in objects)
    expected = [
        "ConfigMap", "ConfigMap", "ConfigMap", "Deployment", "HorizontalPodAutoscaler",
        "Ingress", "PodDisruptionBudget", "Secret", "Service", "ServiceAccount", "ServiceMonitor",
    ]
    if bundle.source.startswith("kustomize"):
        expected = sorted(expected + ["Namespace"])
    assert kinds == expected
    problems = [p for o in objects for p in schema_problems(o)]
    assert not problems, "\n".join(problems)


def test_the_schema_check_is_strict(plain_full):
    """The validator refuses what the API server would: a misspelt field, a wrong type, a
    missing required field, and a ServiceMonitor endpoint with a typo."""
    dep = copy.deepcopy(plain_full.deployment)
    dep["spec"]["replica"] = 2
    assert schema_problems(dep)
    dep = copy.deepcopy(plain_full.deployment)
    dep["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["path"] = 7
    assert schema_problems(dep)
    dep = copy.deepcopy(plain_full.deployment)
    del dep["spec"]["template"]["spec"]["containers"][0]["name"]
    assert schema_problems(dep)
    sm = copy.deepcopy(plain_full.one("ServiceMonitor"))
    sm["spec"]["endpoints"][0]["intervall"] = "30s"
    assert schema_problems(sm)
    sm = copy.deepcopy(plain_full.one("ServiceMonitor"))
    del sm["spec"]["selector"]
    assert schema_problems(sm)


# --------------------------------------------------------------------------------------------
# Conventions


def walk(node, path=""):
    """Every (path, key, value) of a parsed object."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield path, k, v
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


def test_default_objects_and_namespace(plain):
    """`kubectl apply -k deploy/kubernetes` as is: no CRD-backed or host-specific object, no
    Secret (the operator makes it), everything in namespace claimgate."""
    kinds = sorted(o["kind"] for o in plain.objects)
    assert kinds == [
        "ConfigMap", "ConfigMap", "ConfigMap", "Deployment", "HorizontalPodAutoscaler",
        "Namespace", "PodDisruptionBudget", "Service", "ServiceAccount",
    ]
    for o in plain.objects:
        if o["kind"] == "Namespace":
            assert o["metadata"]["name"] == "claimgate"
            # the pods meet the "restricted" Pod Security Standard, and the namespace says so
            assert o["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        else:
            assert o["metadata"].get("namespace") == "claimgate", o["metadata"]


def test_standard_labels_everywhere(bundle):
    labelled = [(f"{o['kind']}/{o['metadata']['name']}", o["metadata"].get("labels") or {}) for o in bundle.objects]
    labelled.append(("pod template", bundle.pod["metadata"].get("labels") or {}))
    for what, labels in labelled:
        missing = [k for k in LABEL_KEYS if not labels.get(k)]
        assert not missing, f"{bundle.source}: {what} lacks {missing}"
        for k, v in labels.items():
            assert isinstance(v, str) and len(v) <= 63 and LABEL_VALUE.match(v), (what, k, v)
        assert labels["app.kubernetes.io/part-of"] == "claimgate"
        if bundle.source == "helm":
            assert labels.get("helm.sh/chart", "").startswith("claimgate-"), what
            assert labels["app.kubernetes.io/managed-by"] == "Helm"
        else:
            # the plain manifests drop helm.sh/chart (deploy/kubernetes/README.md)
            assert "helm.sh/chart" not in labels and labels["app.kubernetes.io/managed-by"] == "kustomize"
    versions = {labels["app.kubernetes.io/version"] for _, labels in labelled}
    assert len(versions) == 1, versions


def test_security_context(bundle):
    pod = bundle.pod["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 65532
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    c = bundle.container["securityContext"]
    assert c["runAsNonRoot"] is True
    assert c["runAsUser"] == 65532  # the image's uid (distroless "nonroot")
    assert c["readOnlyRootFilesystem"] is True
    assert c["allowPrivilegeEscalation"] is False
    assert c["capabilities"] == {"drop": ["ALL"]}
    assert c["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in c or c["privileged"] is False
    assert bundle.pod["spec"]["automountServiceAccountToken"] is False
    # the Secret's files: readable by the pod's group, not by the world
    _, vol = bundle.volume_for("/etc/claimgate/secrets")
    assert vol["secret"]["defaultMode"] & 0o007 == 0
    assert pod.get("fsGroup") == 65532


def test_probes_ports_and_config_agree(bundle):
    c = bundle.container
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert set(ports) == {"proxy", "admin"}
    config = bundle.config()
    assert ports["proxy"] == int(config["server"]["listen"].rsplit(":", 1)[1])
    assert ports["admin"] == int(config["admin"]["listen"].rsplit(":", 1)[1])
    # the admin port must listen beyond loopback, or the kubelet's probes cannot reach it
    assert not config["admin"]["listen"].startswith("127.")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path
        assert get["port"] in ("admin", ports["admin"]), get
    svc = bundle.one("Service")
    for sp in svc["spec"]["ports"]:
        target = sp["targetPort"]
        target_num = ports[target] if isinstance(target, str) else target
        assert target_num in ports.values(), sp
        # the Service offers each port under the container's own number and name
        assert sp["port"] == target_num and sp["name"] in ports, sp
    assert {p["name"] for p in svc["spec"]["ports"]} == {"proxy", "admin"}
    service_port_names = {p["name"] for p in svc["spec"]["ports"]}
    for sm in bundle.of("ServiceMonitor"):
        for ep in sm["spec"]["endpoints"]:
            assert ep["port"] == "admin" and ep["path"] == "/metrics"
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    for ing in bundle.of("Ingress"):
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                backend = p["backend"]["service"]
                assert backend["name"] == svc["metadata"]["name"]
                assert backend["port"].get("name", "proxy") == "proxy" and "proxy" in service_port_names


def test_resources_are_set(bundle):
    r = bundle.container["resources"]
    for part in ("requests", "limits"):
        assert r.get(part, {}).get("cpu") and r[part].get("memory"), r


def test_no_subpath_and_whole_directory_mounts(bundle):
    for o in bundle.with_secret:
        bad = [p for p, k, _ in walk(o) if k in ("subPath", "subPathExpr")]
        assert not bad, f"{o['kind']}: subPath at {bad}"
    mounts = [m["mountPath"] for m in bundle.container["volumeMounts"]]
    assert sorted(mounts) == sorted(MOUNTS), mounts
    # none inside another: a mount point within a ConfigMap volume would be hidden or refused
    for a in mounts:
        for b in mounts:
            assert a == b or not (b + "/").startswith(a.rstrip("/") + "/"), (a, b)
    rendered = {o["metadata"]["name"] for o in bundle.of("ConfigMap")}
    for path, kind in MOUNTS.items():
        mount, vol = bundle.volume_for(path)
        assert mount.get("readOnly") is True, mount
        assert kind in vol, vol
        # whole directory: no `items` picking files (a new policy file would never appear)
        assert "items" not in vol[kind], vol
        if kind == "configMap":
            assert vol[kind]["name"] in rendered
        else:
            assert vol[kind]["secretName"] == bundle.secret["metadata"]["name"]
    # the config names the mounted directories by absolute path
    config = bundle.config()
    assert config["policies"]["dir"].rstrip("/") == "/etc/claimgate/policies"
    revoked = pathlib.PurePosixPath(config["revocations"]["file"])
    assert str(revoked.parent) == "/etc/claimgate/revocations"
    assert revoked.name in bundle.configmap(bundle.volume_for(str(revoked.parent))[1]["configMap"]["name"])["data"]
    assert config["audit"]["path"] == "-"  # stdout: the root filesystem is read-only
    assert bundle.container["args"] == ["serve", "--config", CONFIG_PATH]


def test_secret_keys_are_what_the_config_names(bundle):
    named = set(SECRET_REF.findall(bundle.config_text()))
    assert named >= {"sealing-key-0", "upload-id-key"}, named
    assert set(bundle.secret_data()) == named
    # every sealing key and secret of the config comes from the mounted Secret
    config = bundle.config()
    assert all(k.startswith("file:/etc/claimgate/secrets/") for k in config["sts"]["sealing_keys"])


def test_replicas_autoscaler_and_disruption_budget(bundle):
    dep = bundle.deployment
    pod_labels = bundle.pod["metadata"]["labels"]
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    hpa = bundle.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", dep["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    # the HPA owns the replica count: a `replicas` in the Deployment would scale a busy
    # deployment back down on every apply
    assert "replicas" not in dep["spec"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    pdb = bundle.one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # with the fewest replicas, a voluntary disruption still leaves one serving
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    assert bundle.one("Service")["spec"]["selector"] == selector
    strategy = dep["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_no_restart_on_config_edits_and_a_graceful_stop(bundle):
    annotations = bundle.pod["metadata"].get("annotations") or {}
    assert not [k for k in annotations if k.startswith("checksum/")], annotations
    for o in bundle.of("ConfigMap"):
        # a hashed name (configMapGenerator's default) would roll the pods on every edit
        assert not re.search(r"-[a-z0-9]{10}$", o["metadata"]["name"]), o["metadata"]["name"]
    grace = bundle.pod["spec"]["terminationGracePeriodSeconds"]
    shutdown = bundle.config()["server"]["shutdown_grace"]
    m = re.fullmatch(r"(\d+)s", shutdown)
    assert m, f"shutdown_grace {shutdown!r}: write it in seconds"
    pre_stop = bundle.container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert grace > int(m.group(1)) + pre_stop, (grace, shutdown, pre_stop)


def test_policy_configmap_holds_every_policy_file(bundle):
    _, vol = bundle.volume_for("/etc/claimgate/policies")
    data = bundle.configmap(vol["configMap"]["name"])["data"]
    expected = {p.name: p.read_text() for p in sorted((ROOT / "policies").glob("*.toml"))}
    assert expected, "no policies/*.toml"
    assert data == expected


# --------------------------------------------------------------------------------------------
# The config set, through claimgate itself


def write_volume(directory, files):
    """Lays files out as the kubelet's atomic writer does: DIR/..<ts>/F, DIR/..data -> ..<ts>,
    DIR/F -> ..data/F; an update is a new ..<ts> and a swap of the ..data link."""
    directory.mkdir(parents=True)
    stamp = directory / "..2026_01_01_00_00_00.000000001"
    stamp.mkdir()
    for name, text in files.items():
        (stamp / name).write_text(text)
    (directory / "..data").symlink_to(stamp.name)
    for name in files:
        (directory / name).symlink_to(f"..data/{name}")


def pod_root(tmp, bundle, secret_data=None, edit=None):
    """The pod's /etc/claimgate, under tmp: each mounted volume's files from the rendered
    ConfigMaps and the Secret; absolute /etc/claimgate paths in the config rewritten."""
    etc = tmp / "etc" / "claimgate"
    volumes = {v["name"]: v for v in bundle.pod["spec"]["volumes"]}
    for m in bundle.container["volumeMounts"]:
        vol = volumes[m["name"]]
        if "configMap" in vol:
            files = dict(bundle.configmap(vol["configMap"]["name"])["data"])
        else:
            assert vol["secret"]["secretName"] == bundle.secret["metadata"]["name"]
            files = dict(secret_data if secret_data is not None else bundle.secret_data())
        rel = pathlib.PurePosixPath(m["mountPath"]).relative_to(POD_ETC)
        if edit:
            edit(str(rel), files)
        for name in files:
            if name.endswith(".toml"):
                files[name] = files[name].replace(POD_ETC + "/", f"{etc}/")
        write_volume(etc / rel, files)
    return etc


def claimgate_validate(bundle, etc):
    args = bundle.container["args"]
    assert args[0] == "serve"
    # `validate` takes the same --config as `serve`
    argv = [BIN, "validate", *(a.replace(POD_ETC + "/", f"{etc}/") for a in args[1:])]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CLAIMGATE_"))}
    # any env: secret the config names (the default config has none: its secrets are files)
    for name in re.findall(r'"env:([A-Za-z_][A-Za-z0-9_]*)"', bundle.config_text()):
        env[name] = fresh_key()
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)


def operator_secret(bundle):
    """The Secret's keys as an operator fills them (kustomize: secret.example.yaml's blanks)."""
    data = bundle.secret_data()
    if all(data.values()):
        return data
    return secret_values(data)


def test_claimgate_validates_the_rendered_config_set(bundle, tmp_path):
    assert pathlib.Path(BIN).exists(), f"no claimgate binary at {BIN} (CLAIMGATE_BIN)"
    etc = pod_root(tmp_path, bundle, operator_secret(bundle))
    r = claimgate_validate(bundle, etc)
    assert r.returncode == 0, f"claimgate validate refused the rendered config:\n{r.stdout}\n{r.stderr}"
    # it read the policies through the kubelet's symlinks (the hidden ..data and ..<time>
    # entries are skipped, the file links resolve through them): every role of the files
    assert (etc / "policies" / "..data").is_symlink()
    roles = sum(t.count("[[roles]]") for t in bundle.configmap("claimgate-policies")["data"].values())
    m = re.search(r"(\d+) role\(s\)", r.stdout + r.stderr)
    if m:  # validate's summary line; its absence is not a failure of the manifests
        assert int(m.group(1)) == roles, (r.stdout, roles)


def _broken_policy(rel, files):
    if rel == "policies":
        files["ml-platform.toml"] += '\n[[roles]\nname = "broken"\n'


def _broken_revocation(rel, files):
    if rel == "revocations":
        files["revoked.toml"] += '\n[[revoked]]\njti = "4f1c9a"\n'  # a jti needs its issuer


def _short_sealing_key(rel, files):
    if rel == "secrets":
        files["sealing-key-0"] = base64.b64encode(b"too short").decode()


def _missing_upload_key(rel, files):
    if rel == "secrets":
        del files["upload-id-key"]


@pytest.mark.parametrize(
    "edit, named",
    [
        (_broken_policy, "ml-platform.toml"),
        (_broken_revocation, "revoked.toml"),
        (_short_sealing_key, "sealing key"),
        (_missing_upload_key, "upload-id-key"),
    ],
    ids=["policy-syntax", "revocation-entry", "short-sealing-key", "missing-secret-key"],
)
def test_claimgate_refuses_a_broken_config_set(bundle, tmp_path, edit, named):
    assert pathlib.Path(BIN).exists(), f"no claimgate binary at {BIN} (CLAIMGATE_BIN)"
    etc = pod_root(tmp_path, bundle, operator_secret(bundle), edit=edit)
    r = claimgate_validate(bundle, etc)
    out = r.stdout + r.stderr
    assert r.returncode != 0, f"claimgate validate accepted a broken set:\n{out}"
    assert named in out, out


# --------------------------------------------------------------------------------------------
# The Helm chart, statically (always: helm is not needed)

TEMPLATES = CHART / "templates"
ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)


def chart_yaml():
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


def chart_values():
    return yaml.safe_load((CHART / "values.yaml").read_text())


def template_texts():
    files = sorted(TEMPLATES.glob("*.yaml")) + sorted(TEMPLATES.glob("*.tpl")) + [TEMPLATES / "NOTES.txt"]
    return {p.name: p.read_text() for p in files}


def test_chart_metadata():
    chart = chart_yaml()
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "claimgate" == CHART.name
    assert chart["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
    assert chart["appVersion"] == cargo, "appVersion follows Cargo.toml's version"
    for name in ("_helpers.tpl", "NOTES.txt"):
        assert (TEMPLATES / name).is_file(), name


def test_chart_values_hold_what_the_templates_need():
    v = chart_values()
    assert v["replicaCount"] >= 2
    a = v["autoscaling"]
    assert a["enabled"] is True and a["minReplicas"] >= 2 and a["maxReplicas"] >= a["minReplicas"]
    assert 0 < a["targetCPUUtilizationPercentage"] <= 100
    assert v["podDisruptionBudget"]["enabled"] is True
    assert v["containerPorts"] == {"proxy": 8443, "admin": 9090}
    for part in ("requests", "limits"):
        assert v["resources"][part]["cpu"] and v["resources"][part]["memory"]
    sc = v["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert v["podSecurityContext"]["runAsNonRoot"] is True
    assert v["serviceMonitor"]["enabled"] is False and v["ingress"]["enabled"] is False
    s = v["secret"]
    # defaults carry no secret material: nothing to leak from values, nothing shared by all
    assert s["create"] is False and s["sealingKeys"] == [] and s["uploadIdKey"] == "" and s["downstream"] == {}
    # empty means "the chart's own file"
    assert v["config"] == "" and v["revocations"] == "" and v["policies"] == {}


def test_chart_templates_are_well_formed():
    texts = template_texts()
    defines = set()
    for text in texts.values():
        defines |= set(re.findall(r'\{\{-?\s*define\s+"([^"]+)"', text))
    assert {"claimgate.fullname", "claimgate.labels", "claimgate.selectorLabels"} <= defines
    values = chart_values()
    for name, text in texts.items():
        assert text.count("{{") == text.count("}}"), f"{name}: unbalanced delimiters"
        # delimiters alternate: no `{{` inside an action, no stray `}}`
        depth = 0
        for tok in re.findall(r"\{\{|\}\}", text):
            depth += 1 if tok == "{{" else -1
            assert depth in (0, 1), f"{name}: nested or stray template delimiters"
        # every block closed, in order
        stack = []
        for action in ACTION.findall(text):
            if action.startswith("/*"):
                assert action.endswith("*/"), f"{name}: unclosed comment"
                continue
            word = re.match(r"(\w+)", action)
            word = word.group(1) if word else ""
            if word in ("if", "range", "with", "define", "block"):
                stack.append(word)
            elif word == "end":
                assert stack, f"{name}: `end` without a block"
                stack.pop()
            elif word == "else":
                assert stack, f"{name}: `else` outside a block"
        assert not stack, f"{name}: unclosed {stack}"
        for inc in re.findall(r'(?:include|template)\s+"([^"]+)"', text):
            assert inc in defines, f"{name}: include {inc!r} names no define"
        for ref in re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", text):
            node = values
            for part in ref.strip(".").split("."):
                assert isinstance(node, dict) and part in node, f"{name}: .Values{ref} is not in values.yaml"
                node = node[part]
        assert not re.search(r"\bsubPath(Expr)?\s*:", text), f"{name}: subPath"
        assert not re.search(r"checksum/[\w.-]*\s*:", text), f"{name}: a checksum annotation"
    # the objects the chart can render
    kinds = set()
    for text in texts.values():
        kinds |= set(re.findall(r"^kind:\s*(\w+)", text, re.M))
    assert kinds == {
        "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Ingress", "PodDisruptionBudget",
        "Secret", "Service", "ServiceAccount", "ServiceMonitor",
    }, kinds
    assert re.search(r"^apiVersion: autoscaling/v2$", texts["hpa.yaml"], re.M)
    assert re.search(r"^apiVersion: monitoring.coreos.com/v1$", texts["servicemonitor.yaml"], re.M)
    # the policies' ConfigMap reads the chart's copy of policies/
    assert 'Files.Glob "files/policies/*.toml"' in texts["configmap-policies.yaml"]
    for f in ("files/claimgate.toml", "files/revoked.toml"):
        assert f'Files.Get "{f}"' in texts["_helpers.tpl"], f


def test_chart_defaults_are_the_plain_manifests(plain):
    """The chart's default config, revocation list and policies are the plain manifests' (and
    policies/ is the source of both copies); its default values are the plain settings."""
    files = CHART / "files"
    assert (files / "claimgate.toml").read_text() == (PLAIN / "config" / "claimgate.toml").read_text()
    assert (files / "claimgate.toml").read_text() == plain.config_text()
    assert (files / "revoked.toml").read_text() == (PLAIN / "revocations" / "revoked.toml").read_text()
    assert (files / "revoked.toml").read_text() == plain.configmap("claimgate-revocations")["data"]["revoked.toml"]
    source = {p.name: p.read_text() for p in (ROOT / "policies").glob("*.toml")}
    for copy_dir in (files / "policies", PLAIN / "policies"):
        assert {p.name: p.read_text() for p in copy_dir.glob("*.toml")} == source, copy_dir

    v = chart_values()
    c = plain.container
    assert v["resources"] == c["resources"]
    assert v["securityContext"] == c["securityContext"]
    assert v["podSecurityContext"] == plain.pod["spec"]["securityContext"]
    assert v["containerPorts"] == {p["name"]: p["containerPort"] for p in c["ports"]}
    svc = {p["name"]: p["port"] for p in plain.one("Service")["spec"]["ports"]}
    assert (v["service"]["port"], v["service"]["adminPort"]) == (svc["proxy"], svc["admin"])
    assert v["terminationGracePeriodSeconds"] == plain.pod["spec"]["terminationGracePeriodSeconds"]
    assert v["preStopSleepSeconds"] == c["lifecycle"]["preStop"]["sleep"]["seconds"]
    hpa = plain.one("HorizontalPodAutoscaler")["spec"]
    assert (v["autoscaling"]["minReplicas"], v["autoscaling"]["maxReplicas"]) == (hpa["minReplicas"], hpa["maxReplicas"])
    assert v["autoscaling"]["targetCPUUtilizationPercentage"] == hpa["metrics"][0]["resource"]["target"]["averageUtilization"]
    assert v["podDisruptionBudget"]["maxUnavailable"] == plain.one("PodDisruptionBudget")["spec"]["maxUnavailable"]
    app = chart_yaml()["appVersion"]
    assert c["image"] == f"{v['image']['repository']}:{app}"
    assert plain.deployment["metadata"]["labels"]["app.kubernetes.io/version"] == app
    # the template mounts and runs what the plain Deployment does
    dep = (TEMPLATES / "deployment.yaml").read_text()
    assert f"args: {json.dumps(c['args'])}" in dep
    for m in c["volumeMounts"]:
        assert f"mountPath: {m['mountPath']}" in dep, m
    for probe in ("/healthz", "/readyz"):
        assert f"path: {probe}" in dep


# --------------------------------------------------------------------------------------------
# The Helm chart, rendered (needs helm)


def normalized(o):
    """An object with what may differ between helm and kustomize taken out."""
    o = copy.deepcopy(o)
    for _, k, v in list(walk(o)):
        if k == "labels" and isinstance(v, dict):
            v.pop("helm.sh/chart", None)
            v.pop("app.kubernetes.io/managed-by", None)
    o["metadata"].pop("namespace", None)
    return o


@pytest.fixture(scope="module")
def helm_bin():
    if not HELM:
        pytest.fail("helm is not on PATH (nor $HELM_BIN): scripts/test installs it with deploy/helm/install-tools.sh")
    return HELM


def test_helm_lint(helm_bin, tmp_path):
    helm("lint", "--strict", str(CHART))
    helm("lint", "--strict", str(CHART), "--values", str(helm_values_file(tmp_path)))


def test_helm_defaults_render_the_plain_manifests(helm_bin, plain):
    r = helm("template", "claimgate", str(CHART), "--namespace", "claimgate")
    rendered = load_docs(r.stdout)
    # defaults: no Secret (the operator's), no ServiceMonitor or Ingress
    h = {(o["kind"], o["metadata"]["name"]): normalized(o) for o in rendered}
    k = {(o["kind"], o["metadata"]["name"]): normalized(o) for o in plain.objects if o["kind"] != "Namespace"}
    assert sorted(h) == sorted(k)
    for key in h:
        assert h[key] == k[key], f"{key}: helm's default rendering differs from deploy/kubernetes"
    problems = [p for o in rendered for p in schema_problems(o)]
    assert not problems, "\n".join(problems)


def test_helm_full_rendering_matches_the_plain_components(helm_full, plain_full):
    h = {(o["kind"], o["metadata"]["name"]): normalized(o) for o in helm_full.objects if o["kind"] != "Secret"}
    k = {(o["kind"], o["metadata"]["name"]): normalized(o) for o in plain_full.objects if o["kind"] != "Namespace"}
    assert h == k


def test_helm_values_switch_what_they_say(helm_bin, tmp_path):
    r = helm(
        "template", "claimgate", str(CHART), "--namespace", "claimgate",
        "--set", "autoscaling.enabled=false", "--set", "replicaCount=3",
        "--set", "podDisruptionBudget.enabled=false", "--set", "preStopSleepSeconds=0",
        "--set", "secret.existingSecret=my-keys", "--set", "serviceAccount.create=false",
    )
    b = Bundle("helm", load_docs(r.stdout), {"metadata": {"name": "my-keys"}})
    kinds = sorted(o["kind"] for o in b.objects)
    assert kinds == ["ConfigMap", "ConfigMap", "ConfigMap", "Deployment", "Service"]
    assert b.deployment["spec"]["replicas"] == 3
    assert "lifecycle" not in b.container
    assert b.volume_for("/etc/claimgate/secrets")[1]["secret"]["secretName"] == "my-keys"
    # own config and policies in values replace the chart's files
    cfg = tmp_path / "c.toml"
    cfg.write_text((CHART / "files" / "claimgate.toml").read_text().replace("30s", "20s"))
    r = helm(
        "template", "x", str(CHART), "--set-file", f"config={cfg}",
        "--set-string", "policies.only\\.toml=# none",
    )
    b = Bundle("helm", load_docs(r.stdout))
    assert b.config()["server"]["shutdown_grace"] == "20s"
    assert b.configmap("x-claimgate-policies")["data"] == {"only.toml": "# none\n"}


def test_helm_refuses_a_secret_missing_a_key_the_config_names(helm_bin):
    r = helm(
        "template", "claimgate", str(CHART), "--set", "secret.create=true",
        "--set", f"secret.sealingKeys[0]={fresh_key()}", "--set", f"secret.uploadIdKey={fresh_key()}",
        check=False,
    )
    assert r.returncode != 0
    assert "client-secret" in r.stderr, r.stderr
