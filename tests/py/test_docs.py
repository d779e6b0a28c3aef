"""docs/ kept true to the code.

- Every metric documented in docs/reference/metrics.md is registered in src/metrics.rs, and
  every registered metric is documented.
- The complete example in docs/reference/config.md passes `claimgate validate` (the config
  refuses unknown keys, so a misspelled documented key fails), every key in the reference's
  key tables is a field of the config's file format, and every such field is documented.
- Every key in the key tables of docs/reference/policies.md is a field of the policy file
  format (the serde structs of src/policy/, each refusing unknown fields), in the table of
  the struct it belongs to, and every such field is documented.
- Every audit field documented in docs/reference/audit.md is a field of the record in
  src/audit/mod.rs and the reverse; the records a running `claimgate dev` writes hold only
  documented fields, and every field documented as always present.
- Every relative link in docs/ and in the READMEs of deploy/helm/claimgate and
  deploy/kubernetes points to an existing file (and, into Markdown, to an existing heading).
"""

import base64
import json
import os
import pathlib
import re
import secrets
import subprocess
import tomllib
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import BIN, TRAINER, Dev

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def text(path):
    return (ROOT / path).read_text()


def table_rows(markdown, first_header):
    """The rows of every table whose first header cell is `first_header`, as cell lists."""
    rows = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
        if lines[i].lstrip().startswith("|") and cells[0] == first_header:
            i += 2  # the header and its |---| line
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
        else:
            i += 1
    return rows


def backticked(cell):
    return re.findall(r"`([^`]+)`", cell)


def marked_block(markdown, marker):
    """The fenced block right after `<!-- marker -->`."""
    m = re.search(rf"<!-- {re.escape(marker)} -->\s*```[a-z]*\n(.*?)\n```", markdown, re.S)
    assert m, f"no block marked <!-- {marker} -->"
    return m.group(1)


# --- metrics ----------------------------------------------------------------------------------


def registered_metrics():
    names = set(re.findall(r'"(claimgate_[a-z0-9_]+)"', text("src/metrics.rs")))
    assert len(names) >= 15, f"too few metric registrations found in src/metrics.rs: {names}"
    return names


def test_every_metric_is_documented_and_every_documented_metric_exists():
    doc = text("docs/reference/metrics.md")
    rows = [backticked(r[0])[0] for r in table_rows(doc, "metric") if backticked(r[0])]
    assert len(rows) == len(set(rows)), f"a metric is documented twice: {sorted(rows)}"
    documented = set(rows)
    registered = registered_metrics()
    assert not documented - registered, f"documented but not registered in src/metrics.rs: {sorted(documented - registered)}"
    assert not registered - documented, f"registered but not documented in metrics.md: {sorted(registered - documented)}"
    # any other mention (prose, alert examples) names a real metric too
    for name in set(re.findall(r"\bclaimgate_[a-z0-9_]+", doc)):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in registered or base in registered, f"metrics.md mentions unknown metric {name}"


# --- configuration ----------------------------------------------------------------------------


def config_sections():
    """The top-level sections of the config file (RawConfig's fields)."""
    body = re.search(r"struct RawConfig \{(.*?)\n\}", text("src/config.rs"), re.S)
    assert body, "no RawConfig in src/config.rs"
    names = set(re.findall(r"^\s+([a-z_]+)\s*:", body.group(1), re.M))
    assert {"server", "routes"} <= names, names
    return names


def config_fields():
    """Field names of the config file format (src/config.rs's Raw* structs and credential
    kinds) and of the revocation list (src/identity/revocation.rs)."""
    src = text("src/config.rs")
    start = src.index("// File format")
    end = src.index("// Validated configuration")
    raw = src[start:end]
    fields = set(re.findall(r"^\s+(?:pub\s+)?([a-z_][a-z0-9_]*)\s*:\s*[A-Za-z(]", raw, re.M))
    fields -= config_sections()
    fields |= set(re.findall(r'rename\s*=\s*"([a-z_]+)"', raw))
    rev = text("src/identity/revocation.rs")
    entry = re.search(r"struct RawEntry \{(.*?)\}", rev, re.S).group(1)
    fields |= set(re.findall(r"^\s+([a-z_][a-z0-9_]*)\s*:", entry, re.M))
    for sure in ["listen", "issuer", "audiences", "sealing_keys", "upload_id_key", "token_url", "access_key_id"]:
        assert sure in fields, f"the field scan of src/config.rs missed `{sure}`: {sorted(fields)}"
    return fields


def documented_keys():
    doc = text("docs/reference/config.md")
    keys = set()
    for row in table_rows(doc, "key"):
        names = backticked(row[0])
        assert names, f"a key table row names no key: {row}"
        keys.update(n.split(".")[-1] for n in names)
    return keys


def test_every_documented_key_is_a_config_field_and_every_field_is_documented():
    doc = text("docs/reference/config.md")
    headings = set(re.findall(r"^#+ `\[\[?([a-z_]+)\]\]?`", doc, re.M))
    sections = config_sections()
    assert sections <= headings, f"config sections without a heading in config.md: {sorted(sections - headings)}"
    fields = config_fields()
    keys = documented_keys()
    assert not keys - fields, f"config.md documents keys src/config.rs does not have: {sorted(keys - fields)}"
    assert not fields - keys, f"src/config.rs has keys config.md does not document: {sorted(fields - keys)}"


def toml_keys(value):
    """Every key used anywhere in a parsed TOML document."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from toml_keys(v)
    elif isinstance(value, list):
        for v in value:
            yield from toml_keys(v)


def toml_strings(value, key=None):
    """(key, string) for every string value, with the key it sits under."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from toml_strings(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from toml_strings(v, key)
    elif isinstance(value, str):
        yield key, value


def self_signed(directory):
    """A PEM certificate and key for localhost."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        k = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = datetime.datetime.now(datetime.timezone.utc)
        c = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(k, hashes.SHA256())
        )
        cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    except ImportError:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "30", "-subj", "/CN=localhost"],
            check=True, capture_output=True,
        )
    return cert.read_bytes(), key.read_bytes()


def random_key():
    return base64.b64encode(secrets.token_bytes(32)).decode()


def lay_out_example(tmp_path, source):
    """Writes the example config and every file it names; returns (config path, env)."""
    config = tomllib.loads(source)
    cert, key = self_signed(tmp_path / "generated-tls")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAIMGATE_")}

    def put(rel, data):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())

    for key_name, value in toml_strings(config):
        if value.startswith("file:"):
            put(value[len("file:"):], random_key() + "\n")
        elif value.startswith("env:"):
            env[value[len("env:"):]] = random_key()
        elif key_name == "ca_file":
            put(value, cert)
    tls = config["server"].get("tls")
    if tls:
        put(tls["cert"], cert)
        put(tls["key"], key)
    if "revocations" in config:
        put(config["revocations"]["file"], marked_block(text("docs/reference/config.md"), "example-revocations"))
    policies = config.get("policies", {}).get("dir", "policies")
    put(f"{policies}/example.toml", marked_block(text("docs/reference/policies.md"), "example-policy"))
    audit = config.get("audit", {}).get("path", "-")
    if audit != "-":
        (tmp_path / audit).parent.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "claimgate.toml"
    path.write_text(source)
    return path, env


def validate(path, env):
    return subprocess.run([BIN, "validate", "--config", str(path)], capture_output=True, text=True, env=env)


def test_the_complete_example_config_validates(tmp_path):
    source = marked_block(text("docs/reference/config.md"), "example-config")
    used = set(toml_keys(tomllib.loads(source)))
    keys = documented_keys()
    undocumented = used - keys - config_sections()
    assert not undocumented, f"the example uses keys the tables do not document: {sorted(undocumented)}"
    assert len(used) >= 60, f"the example should use as many keys as it can; it uses {len(used)}"
    path, env = lay_out_example(tmp_path, source)
    done = validate(path, env)
    assert done.returncode == 0, f"claimgate validate refused the documented example:\n{done.stdout}{done.stderr}"
    assert ": ok (" in done.stdout, done.stdout
    # the check has teeth: the same file with one misspelled key is refused
    typo = source.replace("shutdown_grace =", "shutdown_grase =", 1)
    assert typo != source
    path.write_text(typo)
    done = validate(path, env)
    assert done.returncode != 0 and "shutdown_grase" in done.stderr, done.stderr


# --- policies -------------------------------------------------------------------------------

# The policy file format's structs (src/policy/load.rs) and where docs/reference/policies.md
# documents each one's keys: the "where" column of the File format table, or a section's table.
POLICY_STRUCTS = {
    "FileSpec": ("File format", "file top level"),
    "RoleSpec": ("File format", "role"),
    "MemberSpec": ("Members", None),
    "RuleSpec": ("Rules", None),
}
# Deserialized in src/policy/ but not part of the format: a loose re-read of a file that serde
# refused, only to find where each role starts.
POLICY_INTERNAL = {"LooseFile"}


def rust_structs(src):
    """Every struct of Rust source `src` that derives Deserialize:
    name -> (serialized field names, whether unknown fields are refused)."""
    found = {}
    pattern = re.compile(
        r"((?:^[ \t]*(?:#\[[^\n]*\]|///[^\n]*)\n)*)^[ \t]*(?:pub(?:\([^)]*\))?\s+)?struct (\w+) \{(.*?)\n\}",
        re.M | re.S,
    )
    for m in pattern.finditer(src):
        attrs, name, body = m.groups()
        if not re.search(r"#\[derive\([^)]*\bDeserialize\b", attrs):
            continue
        rename_all = re.search(r'rename_all\s*=\s*"([^"]+)"', attrs)
        assert not rename_all or rename_all.group(1) == "snake_case", (
            f"struct {name}: rename_all = {rename_all.group(1)!r}: teach this test to apply it"
        )
        fields, pending = set(), []
        for line in body.splitlines():
            line = line.strip()
            if line.startswith("#["):
                pending.append(line)
                continue
            f = re.match(r"(?:pub(?:\([^)]*\))?\s+)?([a-z_][a-z0-9_]*)\s*:", line)
            if not f:
                continue
            serde = " ".join(pending)
            pending = []
            assert "flatten" not in serde, f"struct {name}: #[serde(flatten)]: teach this test to follow it"
            if re.search(r"\bskip(_deserializing)?\b", serde):
                continue  # not read from the file
            rename = re.search(r'rename\s*=\s*"([^"]+)"', serde)
            fields.add(rename.group(1) if rename else f.group(1))
            fields |= set(re.findall(r'alias\s*=\s*"([^"]+)"', serde))
        found[name] = (fields, "deny_unknown_fields" in attrs)
    return found


def policy_format(sources=None):
    """The policy file format's structs, from src/policy/*.rs (or the given sources)."""
    if sources is None:
        sources = [p.read_text() for p in sorted((ROOT / "src" / "policy").glob("*.rs"))]
    found = {}
    for src in sources:
        found.update(rust_structs(src))
    return found


def doc_section(markdown, heading):
    """The text under `## heading`, up to the next `## ` heading."""
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert m, f"no section '## {heading}'"
    return m.group(1)


def documented_policy_keys(markdown):
    """struct -> the keys policies.md documents for it (each row of a key table names one)."""
    keys = {name: set() for name in POLICY_STRUCTS}
    rows_seen = 0
    for name, (heading, where) in POLICY_STRUCTS.items():
        for row in table_rows(doc_section(markdown, heading), "key"):
            names = backticked(row[0])
            assert len(names) == 1, f"policies.md: one key per row: {row}"
            if where is None or row[1] == where:
                keys[name].add(names[0])
                rows_seen += 1
    # every row of every key table belongs to one struct (a new table or `where` needs a home)
    all_rows = table_rows(markdown, "key")
    assert rows_seen == len(all_rows), f"policies.md has key rows no struct claims: {all_rows}"
    return keys


def policy_key_mismatches(markdown, format_structs):
    problems = []
    names = set(format_structs)
    if names != set(POLICY_STRUCTS) | POLICY_INTERNAL:
        problems.append(
            f"Deserialize structs in src/policy/: {sorted(names)}; this test knows "
            f"{sorted(set(POLICY_STRUCTS) | POLICY_INTERNAL)} (map a new one to its table in policies.md)"
        )
    documented = documented_policy_keys(markdown)
    for name in POLICY_STRUCTS:
        fields, strict = format_structs.get(name, (set(), False))
        if not strict:
            problems.append(f"{name} does not refuse unknown fields (#[serde(deny_unknown_fields)])")
        doc = documented[name]
        if doc - fields:
            problems.append(f"policies.md documents keys {name} does not have: {sorted(doc - fields)}")
        if fields - doc:
            problems.append(f"{name} has keys policies.md does not document: {sorted(fields - doc)}")
    return problems


def test_policy_keys_match_the_policy_file_format_both_ways():
    doc = text("docs/reference/policies.md")
    structs = policy_format()
    for sure in ["roles", "members", "claim", "contains", "actions", "resources"]:
        assert any(sure in f for f, _ in structs.values()), f"the field scan of src/policy/ missed `{sure}`"
    problems = policy_key_mismatches(doc, structs)
    assert not problems, "\n".join(problems)
    # the mode values documented are the ones the file format accepts
    load = text("src/policy/load.rs")
    enum = re.search(r'rename_all\s*=\s*"lowercase"\)\]\s*enum ModeSpec \{(.*?)\}', load, re.S)
    assert enum, "no ModeSpec (lowercase) in src/policy/load.rs"
    modes = {v.lower() for v in re.findall(r"\b([A-Z]\w*)\b", enum.group(1))}
    for row in table_rows(doc_section(doc, "File format"), "key"):
        if backticked(row[0]) == ["mode"]:
            type_cell = "|".join(row[2:-1])  # the cell `"enforce"` \| `"shadow"`, split at its escaped bar
            assert set(re.findall(r'`"([a-z]+)"`', type_cell)) == modes, row

    # the check has teeth: a key dropped from the docs, a field added to the code
    dropped = re.sub(r"^\| `glob` \|.*\n", "", doc, flags=re.M)
    assert dropped != doc
    assert any("`glob`" in p or "'glob'" in p for p in policy_key_mismatches(dropped, structs))
    grown = [src.replace("struct RuleSpec {\n", "struct RuleSpec {\n    effect: Option<String>,\n")
             for src in (p.read_text() for p in sorted((ROOT / "src" / "policy").glob("*.rs")))]
    assert any("'effect'" in p for p in policy_key_mismatches(doc, policy_format(grown)))


# --- audit records ----------------------------------------------------------------------------


def record_fields(struct):
    """Serialized field names of a struct in src/audit/mod.rs."""
    src = text("src/audit/mod.rs")
    body = re.search(rf"pub struct {struct} \{{(.*?)\n\}}", src, re.S)
    assert body, f"no struct {struct} in src/audit/mod.rs"
    names = []
    rename = None
    for line in body.group(1).splitlines():
        m = re.search(r'rename\s*=\s*"([^"]+)"', line)
        if m:
            rename = m.group(1)
        m = re.match(r"\s*pub ([a-z_][a-z0-9_]*)\s*:", line)
        if m:
            names.append(rename or m.group(1))
            rename = None
    assert names, f"no fields found in {struct}"
    return set(names)


def documented_audit_fields():
    rows = table_rows(text("docs/reference/audit.md"), "field")
    fields = {}
    for row in rows:
        names = backticked(row[0])
        assert len(names) == 1, f"one field per row: {row}"
        fields[names[0]] = row[2]  # the `present` column
    return fields


def split_fields(fields):
    top = {f for f in fields if "." not in f}
    nested = {}
    for f in fields:
        if "." in f:
            parent, child = f.split(".", 1)
            nested.setdefault(parent, set()).add(child)
    return top, nested


def test_documented_audit_fields_match_the_record_both_ways():
    top, nested = split_fields(documented_audit_fields())
    record = record_fields("AuditRecord")
    assert top == record, f"audit.md vs AuditRecord: only documented {sorted(top - record)}, only in code {sorted(record - top)}"
    for parent, struct in [("identity", "AuditIdentity"), ("shadow", "AuditShadow")]:
        code = record_fields(struct)
        assert nested.get(parent) == code, f"audit.md vs {struct}: documented {sorted(nested.get(parent, []))}, code {sorted(code)}"
    assert set(nested) == {"identity", "shadow"}, f"unexpected nested fields: {sorted(nested)}"


def http(method, url, token=None, data=None):
    req = urllib.request.Request(url, method=method, data=data)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def dev_records(tmp_path_factory):
    """The records of a real allowed, denied, HTTP-route, STS and session-signed request."""
    dev = Dev(tmp_path_factory.mktemp("docs"), tls=False)
    try:
        token = pathlib.Path(dev.token_file()).read_text().strip()
        assert http("GET", f"{dev.url}/datasets/imagenet/train/0001.tar", token)[0] == 200
        assert http("GET", f"{dev.url}/datasets/pii/users.csv", token)[0] == 403
        http("POST", f"{dev.url}/features/get-online-features", token, data=b"{}")
        form = urllib.parse.urlencode(
            {
                "Action": "AssumeRoleWithWebIdentity",
                "Version": "2011-06-15",
                "RoleArn": TRAINER,
                "RoleSessionName": "docs-test",
                "WebIdentityToken": token,
            }
        ).encode()
        status, body = http("POST", f"{dev.url}/", data=form)
        assert status == 200, body
        answer = body.decode()
        grab = lambda tag: re.search(rf"<{tag}>([^<]+)</{tag}>", answer).group(1)
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=dev.url,
            region_name="us-east-1",
            aws_access_key_id=grab("AccessKeyId"),
            aws_secret_access_key=grab("SecretAccessKey"),
            aws_session_token=grab("SessionToken"),
        )
        assert s3.get_object(Bucket="datasets", Key="imagenet/train/0001.tar")["Body"].read()
        records = []
        for _ in range(50):  # the writer thread appends each record as its response ends
            records = dev.audit()
            if len(records) >= 5 and any(r.get("identity", {}).get("auth_method") == "sts_session" for r in records):
                break
    finally:
        dev.stop()
    assert len(records) >= 5, records
    return records


def test_running_records_hold_only_documented_fields(dev_records):
    documented = documented_audit_fields()
    top, nested = split_fields(documented)
    always = {f for f, present in documented.items() if present == "always"}
    seen = set()
    for r in dev_records:
        assert not set(r) - top, f"undocumented fields {sorted(set(r) - top)} in {r}"
        for parent in ["identity", "shadow"]:
            if parent in r:
                assert not set(r[parent]) - nested[parent], f"undocumented {parent} fields in {r}"
                assert {f"{parent}.{k}" for k in r[parent]} >= {f for f in always if f.startswith(parent + ".")}, r
                seen |= {f"{parent}.{k}" for k in r[parent]}
        assert set(r) >= {f for f in always if "." not in f}, f"a field documented as always present is missing: {r}"
        seen |= set(r)
    # the run produced the fields it was built to produce
    for f in ["identity", "identity.session", "rule", "reason", "upstream_status", "user_agent"]:
        assert f in seen, f"no record carried {f}"
    auth = {r["identity"]["auth_method"] for r in dev_records if "identity" in r}
    assert auth == {"bearer", "sts_session"}, auth


# --- links ------------------------------------------------------------------------------------


def slug(heading):
    """GitHub's anchor for a heading."""
    h = heading.strip().lower()
    h = re.sub(r"[^\w\- ]", "", h)
    return h.replace(" ", "-")


def anchors(path):
    found, counts = set(), {}
    fenced = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced:
            continue
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            s = slug(m.group(1))
            n = counts.get(s, 0)
            found.add(s if n == 0 else f"{s}-{n}")
            counts[s] = n + 1
    return found


def links(path):
    fenced = False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        line = re.sub(r"`[^`]*`", "", line)
        yield from re.findall(r"\]\(([^)\s]+)\)", line)


def test_every_relative_link_in_docs_resolves():
    pages = sorted(DOCS.rglob("*.md"))
    assert len(pages) >= 10, pages
    # the deployment READMEs link into docs/ too
    pages += [ROOT / "deploy" / "helm" / "claimgate" / "README.md", ROOT / "deploy" / "kubernetes" / "README.md"]
    broken = []
    checked = 0
    for page in pages:
        for target in links(page):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            checked += 1
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert checked >= 20, f"only {checked} links checked"
    assert not broken, "broken links:\n" + "\n".join(broken)
