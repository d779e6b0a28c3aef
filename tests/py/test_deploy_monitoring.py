"""The monitoring kit: deploy/grafana/claimgate.json and deploy/prometheus/claimgate-rules.yaml.

- promtool accepts the rules and their unit tests pass (claimgate-rules.test.yaml), and those
  unit tests do fail when an expectation or a rule is wrong;
- every alert has a case where it fires and one where it must not;
- every PromQL expression, in the rules and in the dashboard (panels, variables, annotations),
  names only metrics claimgate exports (read from src/metrics.rs; histograms as _bucket/_sum/
  _count) plus `up`, with labels those metrics have and label values the source emits, and
  parses (the dashboard's, as recording rules, after its template variables are substituted);
- the dashboard is importable JSON: unique panel ids, laid out without overlaps, every panel
  queried; and it shows every metric claimgate exports;
- no metric is labelled by who the caller is;
- against a running `claimgate dev`: its /metrics passes `promtool check metrics`, and a real
  Prometheus loading the rules and scraping it evaluates every rule without error and answers
  every dashboard query.

promtool (and prometheus) come from Debian's `prometheus` package; PROMTOOL / PROMETHEUS override.
"""

import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml

from conftest import BIN, Dev

ROOT = pathlib.Path(__file__).resolve().parents[2]
METRICS_RS = ROOT / "src" / "metrics.rs"
RULES = ROOT / "deploy" / "prometheus" / "claimgate-rules.yaml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "claimgate-rules.test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "claimgate.json"

# Labels Prometheus adds at scrape time, and the histogram bucket label.
TARGET_LABELS = {"job", "instance"}
# No label may say who the caller is: that belongs in the audit log, and it would let callers
# grow the series count without bound.
IDENTITY_LABELS = {
    "sub", "subject", "iss", "user", "username", "user_id", "email", "identity", "principal",
    "caller", "token", "jti", "access_key", "access_key_id", "session", "session_token",
    "source_ip", "client_ip", "ip", "arn",
}
IDENTITY_FRAGMENTS = ("email", "token", "access_key", "subject", "user")
PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "atan2",
}
# What Grafana puts in place of its variables when it runs a panel.
GRAFANA_VARS = {
    "$__rate_interval": "2m",
    "$__interval": "30s",
    "$__range": "1h",
    "${datasource}": "prometheus",
    "$job": "claimgate",
    "$instance": ".*",
    "$route": ".*",
}


def tool(name, env):
    path = os.environ.get(env) or shutil.which(name)
    if not path:
        pytest.fail(
            f"{name} not found: install Debian's `prometheus` package (see .ci/run) or set {env}"
        )
    return path


@pytest.fixture(scope="module")
def promtool():
    return tool("promtool", "PROMTOOL")


# ---------------------------------------------------------------------------- what claimgate exports


def exported():
    """{metric name: (labels, kind)} from the registration strings in src/metrics.rs."""
    src = METRICS_RS.read_text()
    src = src.split("#[cfg(test)]")[0]
    # blank out the text of every string literal but identifiers (help texts hold `;` and `&[`)
    src = re.sub(
        r'"(?:[^"\\]|\\.)*"',
        lambda m: m.group(0) if re.fullmatch(r'"[a-z_][a-z0-9_]*"', m.group(0)) else '""',
        src,
        flags=re.S,
    )
    found = {}
    for m in re.finditer(r'"(claimgate_[a-z0-9_]+)"', src):
        start = src.rfind(";", 0, m.start()) + 1
        end = src.find(";", m.end())
        statement = src[start:end]
        after = src[m.end():end]
        labels = re.search(r"&\[((?:\s*\"[a-z_][a-z0-9_]*\"\s*,?)+)\s*\]", after)
        names = re.findall(r'"([a-z_][a-z0-9_]*)"', labels.group(1)) if labels else []
        kind = "histogram" if "Histogram" in statement else "other"
        assert m.group(1) not in found, f"{m.group(1)} registered twice in {METRICS_RS}"
        found[m.group(1)] = (names, kind)
    assert len(found) >= 10, f"too few metrics found in {METRICS_RS}: {sorted(found)}"
    return found


def series_names():
    """{series name: labels} as they appear on /metrics, plus `up`."""
    out = {"up": []}
    for name, (labels, kind) in exported().items():
        if kind == "histogram":
            out[name + "_bucket"] = labels + ["le"]
            out[name + "_sum"] = labels
            out[name + "_count"] = labels
        else:
            out[name] = labels
    return out


def source_strings():
    """Every string literal in src/: the label values claimgate can emit come from these."""
    out = set()
    for f in (ROOT / "src").rglob("*.rs"):
        out.update(re.findall(r'"((?:[^"\\\n]|\\.)*)"', f.read_text()))
    return out


def test_metrics_are_read_from_the_source():
    names = exported()
    assert names["claimgate_requests_total"][0] == ["route", "action", "decision", "status_class"]
    assert names["claimgate_request_duration_seconds"] == (["route", "action"], "histogram")
    assert names["claimgate_connections_open"] == ([], "other")
    for name in (
        "claimgate_denials_total",
        "claimgate_jwks_last_success_timestamp_seconds",
        "claimgate_jwks_keys",
        "claimgate_audit_sink_up",
    ):
        assert name in names, f"{name} is not registered in src/metrics.rs"


def test_no_metric_is_labelled_by_identity():
    for name, (labels, _) in exported().items():
        for label in labels:
            assert label not in IDENTITY_LABELS, f"{name} has identity label {label!r}"
            for frag in IDENTITY_FRAGMENTS:
                assert frag not in label, f"{name} has identity-like label {label!r}"


# ---------------------------------------------------------------------------- PromQL


def substitute(expr):
    for k in sorted(GRAFANA_VARS, key=len, reverse=True):
        expr = expr.replace(k, GRAFANA_VARS[k])
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr!r}"
    return expr


def analyse(expr):
    """The metric names, selector matchers and grouping labels an expression uses."""
    s = re.sub(r"#[^\n]*", "", expr)
    strings = []

    def keep(m):
        strings.append(m.group(0))
        return f'"\x00{len(strings) - 1}"'

    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', keep, s)
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range and subquery durations
    grouping = []
    for m in re.finditer(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", s):
        grouping += [g.strip() for g in m.group(2).split(",") if g.strip()]
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    selectors = []

    def selector(m):
        name = m.group(1)
        matchers = []
        for lm in re.finditer(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"\x00(\d+)"', m.group(2)):
            raw = strings[int(lm.group(3))]
            matchers.append((lm.group(1), lm.group(2), raw[1:-1]))
        selectors.append((name, matchers))
        return f" {name or ''} "

    s = re.sub(r"(?<![\w:])([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}", selector, s)
    names = set()
    for m in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)", s):
        ident = m.group(1)
        if ident.lower() in PROMQL_KEYWORDS or re.match(r"\s*\(", s[m.end():]):
            continue
        names.add(ident)
    names.update(n for n, _ in selectors if n)
    return names, selectors, grouping


def test_promql_analysis():
    names, selectors, grouping = analyse(
        'sum by (job, route) (rate(claimgate_denials_total{reason="policy"}[1h] offset 5m))'
        ' / on (job) group_left (x) up > 0.05 and time() - foo_seconds{a=~"b"} > 900 # c\n'
    )
    assert names == {"claimgate_denials_total", "up", "foo_seconds"}
    assert ("claimgate_denials_total", [("reason", "=", "policy")]) in selectors
    assert ("foo_seconds", [("a", "=~", "b")]) in selectors
    assert grouping == ["job", "route", "job", "x"]


def rules():
    return yaml.safe_load(RULES.read_text())["groups"]


def alerts():
    return [r for g in rules() for r in g["rules"] if "alert" in r]


def dashboard():
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs():
    """(where, PromQL) for every query in the dashboard, variables substituted."""
    d = dashboard()
    out = []
    for p in d["panels"]:
        for t in p.get("targets", []):
            out.append((f"panel {p['id']} {p['title']!r} {t['refId']}", substitute(t["expr"])))
    for v in d["templating"]["list"]:
        if v["type"] != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_]\w*)\s*\)\s*", q, re.S)
        assert m, f"variable {v['name']}: expected label_values(<selector>, <label>), got {q!r}"
        out.append((f"variable {v['name']}", substitute(m.group(1))))
        out.append((f"variable {v['name']} label", f"count by ({m.group(2)}) ({substitute(m.group(1))})"))
    for a in d["annotations"]["list"]:
        if a.get("expr"):
            out.append((f"annotation {a['name']!r}", substitute(a["expr"])))
    return out


def rule_exprs():
    return [(r.get("alert") or r.get("record"), r["expr"]) for g in rules() for r in g["rules"]]


def check_names(where, expr, known, literals):
    names, selectors, grouping = analyse(expr)
    unknown = names - set(known)
    assert not unknown, f"{where}: {sorted(unknown)} not exported by claimgate: {expr}"
    allowed = set(TARGET_LABELS)
    for n in names:
        allowed.update(known[n])
    for name, matchers in selectors:
        labels = (set(known[name]) | TARGET_LABELS) if name else allowed
        for label, op, value in matchers:
            if label == "__name__":
                continue
            assert label in labels, f"{where}: {name} has no label {label!r}: {expr}"
            if op in ("=", "!=") and name and name.startswith("claimgate_") and label not in TARGET_LABELS:
                assert value in literals, (
                    f"{where}: {name}{{{label}={value!r}}}: claimgate never emits {value!r}"
                )
    for label in grouping:
        assert label in allowed, f"{where}: grouping by {label!r}, which none of {sorted(names)} has"
    return names


def test_rules_use_only_exported_metrics_and_labels():
    known = series_names()
    recorded = {r["record"]: ["job", "route"] for g in rules() for r in g["rules"] if "record" in r}
    literals = source_strings()
    used = set()
    for where, expr in rule_exprs():
        used |= check_names(where, expr, {**known, **recorded}, literals)
    assert {"claimgate_jwks_last_success_timestamp_seconds", "claimgate_denials_total",
            "claimgate_audit_sink_up", "claimgate_upstream_errors_total", "up"} <= used


def test_dashboard_uses_only_exported_metrics_and_labels():
    known = series_names()
    literals = source_strings()
    used = set()
    for where, expr in dashboard_exprs():
        # the dashboard must work without the recording rules loaded: raw metrics only
        used |= check_names(where, expr, known, literals)
    # and it shows everything claimgate exports
    missing = {n for n in known if n != "up" and not n.endswith(("_sum", "_count"))} - used
    assert not missing, f"metrics claimgate exports that no dashboard panel shows: {sorted(missing)}"


def test_dashboard_queries_parse(promtool, tmp_path):
    """promtool parses each dashboard query, as a recording rule, after substitution."""
    exprs = dashboard_exprs()
    doc = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e} for i, (_, e) in enumerate(exprs)
    ]}]}
    f = tmp_path / "dashboard-queries.yaml"
    f.write_text(yaml.safe_dump(doc, sort_keys=False))
    r = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr + "\n".join(f"{i}: {w}" for i, (w, _) in enumerate(exprs))
    assert f"SUCCESS: {len(exprs)} rules found" in r.stdout, r.stdout
    # and promtool does catch a broken one
    f.write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [
        {"record": "dashboard:broken", "expr": "sum by (route) (rate(claimgate_requests_total[5m])"}
    ]}]}))
    r = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True)
    assert r.returncode != 0, r.stdout


# ---------------------------------------------------------------------------- rules


def test_rules_check(promtool):
    r = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    n = sum(len(g["rules"]) for g in rules())
    assert f"SUCCESS: {n} rules found" in r.stdout, r.stdout


def test_rules_unit_tests_pass(promtool):
    r = subprocess.run(
        [promtool, "test", "rules", RULES_TEST.name],
        cwd=RULES_TEST.parent, capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def run_copy(promtool, tmp_path, edit_rules=None, edit_tests=None):
    """promtool test rules on a copy of both files, edited."""
    rules_text = RULES.read_text()
    tests_text = RULES_TEST.read_text()
    if edit_rules:
        old, new = edit_rules
        assert rules_text.count(old) == 1, f"expected {old!r} once in {RULES}"
        rules_text = rules_text.replace(old, new)
    if edit_tests:
        old, new = edit_tests
        assert tests_text.count(old) == 1, f"expected {old!r} once in {RULES_TEST}"
        tests_text = tests_text.replace(old, new)
    (tmp_path / RULES.name).write_text(rules_text)
    (tmp_path / RULES_TEST.name).write_text(tests_text)
    return subprocess.run(
        [promtool, "test", "rules", RULES_TEST.name], cwd=tmp_path, capture_output=True, text=True,
    )


def test_rules_unit_tests_can_fail(promtool, tmp_path):
    # unchanged copies pass...
    assert run_copy(promtool, tmp_path).returncode == 0
    # ...a wrong expectation fails (an annotation promtool must render exactly)...
    r = run_copy(promtool, tmp_path, edit_tests=(
        'summary: "claimgate denies 40% of requests on route data"',
        'summary: "claimgate denies 41% of requests on route data"',
    ))
    assert r.returncode != 0, r.stdout
    out = r.stdout + r.stderr
    assert "FAILED" in out and "denied share jumping from 1% to 40% fires" in out, out
    # ...and so does a rule that lost its minimum-traffic guard.
    r = run_copy(promtool, tmp_path, edit_rules=(
        "          and\n          sum by (job, route) (rate(claimgate_denials_total[5m])) > 0.1\n", "\n",
    ))
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "a quiet route's denials do not fire (minimum traffic)" in out, out


def test_every_alert_is_tested_firing_and_silent():
    tests = yaml.safe_load(RULES_TEST.read_text())
    assert tests["rule_files"] == [RULES.name]
    fires, silent = {}, set()
    for t in tests["tests"]:
        for a in t.get("alert_rule_test", []):
            if a.get("exp_alerts"):
                fires.setdefault(a["alertname"], []).extend(a["exp_alerts"])
            else:
                silent.add(a["alertname"])
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names)), names
    for name in names:
        assert name in fires, f"no test where {name} fires"
        assert name in silent, f"no test where {name} must stay silent"
        for exp in fires[name]:
            assert exp.get("exp_labels", {}).get("severity"), f"{name}: expected labels lack severity"
            assert exp.get("exp_annotations", {}).get("summary"), f"{name}: expected annotations missing"
    assert not (set(fires) | silent) - set(names), "tests name alerts that do not exist"
    recorded = {r["record"] for g in rules() for r in g["rules"] if "record" in r}
    tested = {e["expr"] for t in tests["tests"] for e in t.get("promql_expr_test", [])}
    assert recorded <= tested, f"recording rules without a test: {sorted(recorded - tested)}"


def test_alerts_are_documented():
    names = {a["alert"] for a in alerts()}
    assert {
        "ClaimgateDown", "ClaimgateIdPKeysStale", "ClaimgateIdPKeyFetchFailing",
        "ClaimgateDenialSpike", "ClaimgateAuditSinkFailing", "ClaimgateAuditRecordsDropped",
        "ClaimgateUpstreamErrorRatio", "ClaimgateConfigReloadFailing",
    } <= names
    for a in alerts():
        assert a["labels"]["severity"] in ("critical", "warning", "info"), a["alert"]
        for key in ("summary", "description", "runbook"):
            assert a["annotations"].get(key, "").strip(), f"{a['alert']} has no {key}"


# ---------------------------------------------------------------------------- dashboard


def test_dashboard_is_importable():
    d = dashboard()
    assert d["uid"] and d["title"]
    assert 36 <= d["schemaVersion"] <= 41
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance", "route"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    cells = {}
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p.get("targets"), f"panel {p['title']!r} has no queries"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip(), p["title"]
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            # counters are only ever read through rate()/increase()
            for m in re.finditer(r"claimgate_\w+_total\b|claimgate_\w+_bucket\b", t["expr"]):
                before = t["expr"][: m.start()]
                assert re.search(r"(rate|increase)\(\s*$", before), f"{p['title']!r}: raw counter {m.group(0)}"


# ---------------------------------------------------------------------------- against claimgate dev


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, token=None):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    if not os.path.exists(BIN):
        pytest.fail(f"claimgate binary not found at {BIN} (set CLAIMGATE_BIN)")
    dev = Dev(tmp_path_factory.mktemp("monitoring"), tls=False)
    try:
        admin = next(l.split()[1] for l in dev.lines if l.strip().startswith("metrics "))
        admin = admin.rsplit("/metrics", 1)[0]
        alice = pathlib.Path(dev.token_file("alice")).read_text().strip()
        # an allowed read, a denied one, and a bad token
        assert get(f"{dev.url}/datasets/imagenet/train/0001.tar", alice)[0] == 200
        assert get(f"{dev.url}/datasets/pii/users.csv", alice)[0] == 403
        assert get(f"{dev.url}/datasets/imagenet/train/0001.tar", "not-a-token")[0] in (400, 401, 403)
        yield dev, admin
    finally:
        dev.stop()


def test_live_metrics_pass_promtool_lint(promtool, live):
    _, admin = live
    status, body = get(f"{admin}/metrics")
    assert status == 200
    text = body.decode()
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # what is on /metrics is what this test reads from src/metrics.rs
    known = series_names()
    on_wire = set(re.findall(r"^(claimgate_\w+?)(?:\{| )", text, re.M))
    assert on_wire <= set(known), sorted(on_wire - set(known))
    for name in ("claimgate_requests_total", "claimgate_denials_total", "claimgate_jwks_keys",
                 "claimgate_jwks_last_success_timestamp_seconds", "claimgate_audit_sink_up",
                 "claimgate_request_duration_seconds_bucket", "claimgate_auth_failures_total"):
        assert name in on_wire, f"{name} not on /metrics after traffic"


def query(base, expr):
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        doc = json.load(r)
    assert doc["status"] == "success", doc
    return doc["data"]["result"]


def test_live_prometheus_evaluates_rules_and_dashboard(live, tmp_path):
    """A real Prometheus scrapes claimgate dev with the rules loaded: every rule evaluates
    cleanly, nothing fires on a healthy instance, and every dashboard query answers."""
    prometheus = tool("prometheus", "PROMETHEUS")
    _, admin = live
    target = urllib.parse.urlparse(admin).netloc
    port = free_port()
    shutil.copy(RULES, tmp_path / RULES.name)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [RULES.name],
        "scrape_configs": [{"job_name": "claimgate", "static_configs": [{"targets": [target]}]}],
    }))
    proc = subprocess.Popen(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if query(base, 'claimgate_jwks_keys{job="claimgate"}') and len(query(base, "up[30s]")[0]["values"]) >= 6:
                    break
            except (urllib.error.URLError, ConnectionError, IndexError, KeyError):
                pass
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "Prometheus did not scrape claimgate dev"
            time.sleep(0.5)
        # a few rule evaluations after the scrapes
        time.sleep(3)
        with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=10) as r:
            groups = json.load(r)["data"]["groups"]
        evaluated = [rule for g in groups for rule in g["rules"]]
        assert len(evaluated) == sum(len(g["rules"]) for g in rules())
        for rule in evaluated:
            assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
            if rule["type"] == "alerting":
                assert rule["state"] == "inactive", (rule["name"], rule["alerts"])
        assert query(base, 'job_route:claimgate_requests:rate5m{route!="-"}'), "recording rule empty"
        for where, expr in dashboard_exprs():
            query(base, expr)  # answers without error
        # and the panels that a little traffic must fill are not empty
        for expr in (
            'sum by (route) (rate(claimgate_requests_total{job=~"claimgate"}[1m]))',
            'sum by (reason) (rate(claimgate_denials_total{job=~"claimgate", reason="policy"}[1m]))',
            'histogram_quantile(0.99, sum by (route, le) (rate(claimgate_request_duration_seconds_bucket[1m])))',
            "claimgate_jwks_keys > 0",
            "time() - claimgate_jwks_last_success_timestamp_seconds < 600",
            "claimgate_audit_sink_up == 1",
        ):
            assert query(base, expr), f"no data: {expr}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
