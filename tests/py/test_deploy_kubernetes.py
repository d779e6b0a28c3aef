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
  - the NetworkPolicy: it selects exactly the Deployment's pods, restricts ingress only, names
    exactly the container ports, and — evaluated with NetworkPolicy's own rules against sample
    sources (pods in various namespaces, an address outside the cluster) — admits the proxy
    port from everywhere and the admin port only from the configured peers (default: pods in
    namespace "monitoring"); the chart's networkPolicy.* values switch and reshape it;
  - the config set itself: claimgate.toml and the policies taken out of the rendered
    ConfigMaps, laid out in a temp dir as the kubelet lays out the pod's volumes (..data
    symlinks), the Secret's keys filled with fresh keys, and `claimgate validate` run with the
    container's own arguments: it must pass; a broken policy, revocation list or sealing key,
    or a missing Secret key, must make it fail;
  - the sealing keys: the default config names exactly sealing-key-0 (seals) then
    sealing-key-1 (only opens), both from the Secret, so a rotation changes the Secret's
    values alone (docs/howto/rotating-keys.md); the chart maps secret.sealingKeys[i] to
    sealing-key-i and refuses to render a Secret without both.

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
import ipaddress
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
        "Ingress", "NetworkPolicy", "PodDisruptionBudget", "Secret", "Service", "ServiceAccount",
        "ServiceMonitor",
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
    np = copy.deepcopy(plain_full.one("NetworkPolicy"))
    np["spec"]["ingress"][1]["form"] = np["spec"]["ingress"][1].pop("from")
    assert schema_problems(np)
    np = copy.deepcopy(plain_full.one("NetworkPolicy"))
    np["spec"]["ingress"][0]["ports"][0]["port"] = [8443]
    assert schema_problems(np)


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
        "Namespace", "NetworkPolicy", "PodDisruptionBudget", "Service", "ServiceAccount",
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


# The default config's sealing keys: exactly these two, in this order. The first key listed
# seals, every key opens, so a rotation is done through the Secret's values alone
# (docs/howto/rotating-keys.md, "On Kubernetes"): never an edit of the config, which would
# be a second object the kubelet syncs on its own.
SEALING_KEYS = [f"file:{POD_ETC}/secrets/sealing-key-0", f"file:{POD_ETC}/secrets/sealing-key-1"]


def test_default_config_lists_two_sealing_keys_from_the_secret_key_0_first(bundle):
    for text in (bundle.config_text(), (CHART / "files" / "claimgate.toml").read_text()):
        assert tomllib.loads(text)["sts"]["sealing_keys"] == SEALING_KEYS
    assert {"sealing-key-0", "sealing-key-1"} <= set(bundle.secret_data())


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


# --------------------------------------------------------------------------------------------
# The NetworkPolicy, evaluated as a network plugin that enforces NetworkPolicy would


class Source:
    """Where a connection comes from: a pod (its namespace, with the kubernetes.io/metadata.name
    label the API server sets, and its labels) or, without a namespace, an address outside
    the cluster."""

    def __init__(self, ip, namespace=None, labels=None, ns_labels=None):
        self.ip = ipaddress.ip_address(ip)
        self.namespace = namespace
        self.labels = dict(labels or {})
        self.ns_labels = {**(ns_labels or {}), "kubernetes.io/metadata.name": namespace} if namespace else {}

    def __repr__(self):
        return f"pod{self.labels} in {self.namespace}" if self.namespace else f"{self.ip} (outside)"


OUTSIDE = Source("203.0.113.7")


def pod_in(namespace, labels=None, ns_labels=None):
    # a pod address outside every ipBlock the tests write: an ipBlock is meant for addresses
    # outside the cluster (what it does to pod addresses is up to the plugin)
    return Source("100.64.3.21", namespace, labels, ns_labels)


PROMETHEUS = {"app.kubernetes.io/name": "prometheus"}


def selector_matches(selector, labels):
    """A LabelSelector: every matchLabels pair and every matchExpression; {} selects all."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        ok = {
            "In": lambda: labels.get(key) in values,
            "NotIn": lambda: labels.get(key) not in values,
            "Exists": lambda: key in labels,
            "DoesNotExist": lambda: key not in labels,
        }[op]()
        if not ok:
            return False
    return True


def peer_matches(peer, source, policy_namespace):
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        nets = lambda cidrs: [ipaddress.ip_network(c) for c in cidrs]
        return any(source.ip in n for n in nets([block["cidr"]])) and not any(
            source.ip in n for n in nets(block.get("except", []))
        )
    assert "podSelector" in peer or "namespaceSelector" in peer, f"an empty peer: {peer}"
    if source.namespace is None:
        return False
    if "namespaceSelector" in peer:
        ns_ok = selector_matches(peer["namespaceSelector"], source.ns_labels)
    else:  # podSelector alone: pods of the policy's own namespace
        ns_ok = source.namespace == policy_namespace
    return ns_ok and selector_matches(peer.get("podSelector", {}), source.labels)


def port_matches(entry, port, named):
    if entry.get("protocol", "TCP") != "TCP":
        return False
    if "port" not in entry:
        return True  # every port of the protocol
    first = named.get(entry["port"]) if isinstance(entry["port"], str) else entry["port"]
    return first is not None and first <= port <= entry.get("endPort", first)


def admits(bundle, policy, port, source):
    """Whether `policy` lets `source` reach the Deployment's pods on TCP `port`. A pod the policy
    selects for Ingress takes only what one of its rules admits; a rule admits a port when its
    `ports` is absent or empty or lists it, and a source when its `from` is absent or empty or
    a peer matches it. (Other policies in the cluster could only add to this.)"""
    spec = policy["spec"]
    if not selector_matches(spec["podSelector"], bundle.pod["metadata"]["labels"]):
        return True
    if "Ingress" not in (spec.get("policyTypes") or ["Ingress"]):
        return True
    named = {p["name"]: p["containerPort"] for p in bundle.container["ports"]}
    namespace = policy["metadata"].get("namespace", "claimgate")
    for rule in spec.get("ingress") or []:
        if rule.get("ports") and not any(port_matches(e, port, named) for e in rule["ports"]):
            continue
        if rule.get("from") and not any(peer_matches(p, source, namespace) for p in rule["from"]):
            continue
        return True
    return False


# What the default policy must do: the proxy port for anyone, the admin port for namespace
# "monitoring" (any pod there) and nobody else — not the pods next to claimgate, not another
# namespace whose name merely starts the same, not a namespace merely labelled for monitoring.
DEFAULT_EXPECTATIONS = {
    "proxy": {
        "admitted": [
            OUTSIDE, pod_in("claimgate"), pod_in("default"), pod_in("ml-jobs", {"app": "trainer"}),
            pod_in("monitoring", PROMETHEUS), pod_in("ingress-nginx"),
        ],
        "refused": [],
    },
    "admin": {
        "admitted": [pod_in("monitoring", PROMETHEUS), pod_in("monitoring", {"app": "grafana-agent"})],
        "refused": [
            OUTSIDE, pod_in("claimgate"), pod_in("claimgate", PROMETHEUS), pod_in("default"),
            pod_in("ml-jobs", {"app": "trainer"}), pod_in("kube-system"), pod_in("monitoring-dev", PROMETHEUS),
            pod_in("observability", PROMETHEUS, {"monitoring": "true"}),
        ],
    },
}


def network_policy_problems(bundle, policy, expectations=DEFAULT_EXPECTATIONS):
    problems = []
    spec = policy["spec"]
    if policy["apiVersion"] != "networking.k8s.io/v1":
        problems.append(f"apiVersion {policy['apiVersion']}")
    # exactly the Deployment's pods: its selector, nothing more, nothing less
    selector = bundle.deployment["spec"]["selector"]
    if spec.get("podSelector") != selector:
        problems.append(f"podSelector {spec.get('podSelector')} is not the Deployment's {selector}")
    if not selector_matches(spec.get("podSelector", {}), bundle.pod["metadata"]["labels"]):
        problems.append("podSelector does not select the pods")
    # ingress only: egress must reach IdPs, STS and stores at addresses not known here
    if spec.get("policyTypes") != ["Ingress"] or "egress" in spec:
        problems.append(f"policyTypes {spec.get('policyTypes')}, egress {spec.get('egress')}: ingress only")
    # every rule names ports, each one of the container's ports, and together every port some
    # source must reach (by default: both)
    named = {p["name"]: p["containerPort"] for p in bundle.container["ports"]}
    listed = set()
    for i, rule in enumerate(spec.get("ingress") or []):
        if not rule.get("ports"):
            problems.append(f"ingress[{i}] names no port: it admits every port")
            continue
        for e in rule["ports"]:
            port = named.get(e.get("port")) if isinstance(e.get("port"), str) else e.get("port")
            if port not in named.values() or "endPort" in e or e.get("protocol", "TCP") != "TCP":
                problems.append(f"ingress[{i}]: {e} is not one of the container's ports {named}")
            listed.add(port)
    required = {named[name] for name, expect in expectations.items() if expect["admitted"]}
    if not required <= listed <= set(named.values()):
        problems.append(f"the rules name ports {sorted(map(str, listed))}, the container {named}")
    # who gets through, by NetworkPolicy's rules
    for port_name, expect in expectations.items():
        for source in expect["admitted"]:
            if not admits(bundle, policy, named[port_name], source):
                problems.append(f"{port_name} port refuses {source}")
        for source in expect["refused"]:
            if admits(bundle, policy, named[port_name], source):
                problems.append(f"{port_name} port admits {source}")
    # a port the pod does not serve is nobody's
    if admits(bundle, policy, 8080, pod_in("monitoring", PROMETHEUS)):
        problems.append("port 8080 admitted")
    return problems


def test_network_policy_guards_the_admin_port(bundle):
    """One NetworkPolicy on the Deployment's pods: the proxy port open to all, the admin port
    (no authentication: POST /-/reload, /metrics) only to pods in namespace "monitoring"."""
    problems = network_policy_problems(bundle, bundle.one("NetworkPolicy"))
    assert not problems, f"{bundle.source}:\n" + "\n".join(problems)


def test_the_network_policy_check_is_strict(plain_full):
    """The check above refuses what would open the admin port, miss the pods or the ports."""
    b = plain_full
    good = b.one("NetworkPolicy")
    assert not network_policy_problems(b, good)

    def refused_for(edit, reason):
        np = copy.deepcopy(good)
        edit(np["spec"])
        problems = network_policy_problems(b, np)
        assert any(reason in p for p in problems), (reason, problems)

    admin = 1
    assert good["spec"]["ingress"][admin]["ports"][0]["port"] == 9090
    # the admin rule without peers, or with an empty list of them: everyone
    refused_for(lambda s: s["ingress"][admin].pop("from"), "admin port admits 203.0.113.7")
    refused_for(lambda s: s["ingress"][admin].update({"from": []}), "admin port admits pod{} in claimgate")
    # a peer that admits every namespace, or claimgate's own pods
    refused_for(lambda s: s["ingress"][admin]["from"].append({"namespaceSelector": {}}), "admin port admits pod{} in default")
    refused_for(lambda s: s["ingress"][admin]["from"].append({"podSelector": {}}), "admin port admits pod{} in claimgate")
    # a prefix where the name must match whole
    refused_for(
        lambda s: s["ingress"][admin]["from"][0]["namespaceSelector"].update({
            "matchLabels": {},
            "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["monitoring", "monitoring-dev"]}],
        }),
        "admin port admits pod{'app.kubernetes.io/name': 'prometheus'} in monitoring-dev",
    )
    # the proxy rule reaching the admin port too (a rule without ports: every port)
    refused_for(lambda s: s["ingress"][0].pop("ports"), "ingress[0] names no port")
    # the wrong pods (a selector the pods lack; an empty one: every pod in the namespace)
    refused_for(lambda s: s["podSelector"]["matchLabels"].update({"app": "claimgate"}), "podSelector does not select")
    refused_for(lambda s: s.update({"podSelector": {}}), "is not the Deployment's")
    # ports that are not the container's, or the admin port left out
    refused_for(lambda s: s["ingress"][admin]["ports"][0].update({"port": 9091}), "admin port refuses")
    refused_for(lambda s: s["ingress"][0]["ports"][0].update({"port": 443}), "proxy port refuses 203.0.113.7")
    refused_for(lambda s: s["ingress"].pop(admin), "the rules name ports")
    # egress restricted: the IdPs and stores would be cut off
    refused_for(lambda s: s.update({"policyTypes": ["Ingress", "Egress"]}), "ingress only")
    # a named port resolves through the container's ports
    np = copy.deepcopy(good)
    np["spec"]["ingress"][admin]["ports"][0]["port"] = "admin"
    assert not network_policy_problems(b, np)
    refused_for(lambda s: s["ingress"][admin]["ports"][0].update({"port": "metrics"}), "not one of the container's ports")


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


def _missing_second_sealing_key(rel, files):
    if rel == "secrets":
        del files["sealing-key-1"]


@pytest.mark.parametrize(
    "edit, named",
    [
        (_broken_policy, "ml-platform.toml"),
        (_broken_revocation, "revoked.toml"),
        (_short_sealing_key, "sealing key"),
        (_missing_upload_key, "upload-id-key"),
        (_missing_second_sealing_key, "sealing-key-1"),
    ],
    ids=["policy-syntax", "revocation-entry", "short-sealing-key", "missing-secret-key", "missing-sealing-key-1"],
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
    n = v["networkPolicy"]
    assert n["enabled"] is True and n["proxyFrom"] == []
    assert n["adminFrom"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
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
        "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Ingress", "NetworkPolicy",
        "PodDisruptionBudget", "Secret", "Service", "ServiceAccount", "ServiceMonitor",
    }, kinds
    assert re.search(r"^apiVersion: autoscaling/v2$", texts["hpa.yaml"], re.M)
    assert re.search(r"^apiVersion: networking.k8s.io/v1$", texts["networkpolicy.yaml"], re.M)
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
    # the NetworkPolicy: the proxy rule without peers (proxyFrom empty), the admin rule's peers
    np = plain.one("NetworkPolicy")["spec"]["ingress"]
    assert v["networkPolicy"]["enabled"] is True
    assert [r["ports"] for r in np] == [
        [{"port": v["containerPorts"]["proxy"], "protocol": "TCP"}],
        [{"port": v["containerPorts"]["admin"], "protocol": "TCP"}],
    ]
    assert "from" not in np[0] and v["networkPolicy"]["proxyFrom"] == []
    assert np[1]["from"] == v["networkPolicy"]["adminFrom"]
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
        "--set", "networkPolicy.enabled=false",
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
        "--set", f"secret.sealingKeys[0]={fresh_key()}", "--set", f"secret.sealingKeys[1]={fresh_key()}",
        "--set", f"secret.uploadIdKey={fresh_key()}",
        check=False,
    )
    assert r.returncode != 0
    assert "client-secret" in r.stderr, r.stderr
    # one sealing key is not enough: the default config names two
    r = helm(
        "template", "claimgate", str(CHART), "--set", "secret.create=true",
        "--set", f"secret.sealingKeys[0]={fresh_key()}", "--set", f"secret.uploadIdKey={fresh_key()}",
        "--set", "secret.downstream.client-secret=example",
        check=False,
    )
    assert r.returncode != 0
    assert "sealing-key-1" in r.stderr, r.stderr


def test_helm_sealing_keys_keep_their_order(helm_bin, tmp_path):
    """secret.sealingKeys[i] is key sealing-key-i: a rotation through values swaps the two."""
    new, old = fresh_key(), fresh_key()
    values = tmp_path / "keys.yaml"
    values.write_text(yaml.safe_dump({"secret": {
        "create": True, "sealingKeys": [new, old], "uploadIdKey": fresh_key(),
        "downstream": {"client-secret": "example"},
    }}))
    r = helm("template", "claimgate", str(CHART), "--namespace", "claimgate", "--values", str(values))
    secret = [o for o in load_docs(r.stdout) if o["kind"] == "Secret"]
    assert len(secret) == 1
    data = Bundle("helm", [], secret[0]).secret_data()
    assert (data["sealing-key-0"], data["sealing-key-1"]) == (new, old)


def test_helm_network_policy_values(helm_bin, tmp_path):
    """networkPolicy.enabled switches the policy; proxyFrom and adminFrom are the peers of the
    two ports, evaluated as a plugin would; an empty adminFrom closes the admin port to every
    pod (no rule: an empty `from` would open it to all)."""
    off = helm_render(tmp_path, {"networkPolicy": {"enabled": False}})
    assert not off.of("NetworkPolicy")
    assert sorted(o["kind"] for o in off.objects) == [
        "ConfigMap", "ConfigMap", "ConfigMap", "Deployment", "HorizontalPodAutoscaler",
        "PodDisruptionBudget", "Secret", "Service", "ServiceAccount",
    ]

    # own peers: Prometheus in "observability"; the proxy for namespaces labelled team=ml and
    # the ingress controller, plus a corporate network outside the cluster
    values = {
        "enabled": True,
        "adminFrom": [{
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}},
            "podSelector": {"matchLabels": PROMETHEUS},
        }],
        "proxyFrom": [
            {"namespaceSelector": {"matchLabels": {"team": "ml"}}},
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}},
            {"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}},
        ],
    }
    own = helm_render(tmp_path, {"networkPolicy": values})
    policy = own.one("NetworkPolicy")
    expect = {
        "proxy": {
            "admitted": [
                pod_in("ml-a", {"app": "trainer"}, {"team": "ml"}), pod_in("ingress-nginx"), Source("192.0.2.10"),
            ],
            "refused": [
                OUTSIDE, Source("192.0.2.200"), pod_in("default"), pod_in("ml-b", ns_labels={"team": "data"}),
                pod_in("claimgate"),
            ],
        },
        "admin": {
            "admitted": [pod_in("observability", PROMETHEUS)],
            "refused": [
                pod_in("observability", {"app": "grafana"}), pod_in("monitoring", PROMETHEUS),
                pod_in("claimgate", PROMETHEUS), OUTSIDE,
            ],
        },
    }
    problems = network_policy_problems(own, policy, expect) + schema_problems(policy)
    assert not problems, "\n".join(problems)

    # adminFrom empty: no pod reaches the admin port (only node-local traffic: the probes)
    closed = helm_render(tmp_path, {"networkPolicy": {"enabled": True, "adminFrom": [], "proxyFrom": []}})
    policy = closed.one("NetworkPolicy")
    assert len(policy["spec"]["ingress"]) == 1, policy["spec"]["ingress"]
    expect = {
        "proxy": DEFAULT_EXPECTATIONS["proxy"],
        "admin": {"admitted": [], "refused": [OUTSIDE, pod_in("monitoring", PROMETHEUS), pod_in("claimgate")]},
    }
    problems = network_policy_problems(closed, policy, expect) + schema_problems(policy)
    assert not problems, "\n".join(problems)
