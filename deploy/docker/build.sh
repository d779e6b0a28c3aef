#!/usr/bin/env bash
# The image's build stage, as a script: the Dockerfile runs exactly this, and CI runs it too
# (no Docker engine there), so what the image holds is built and checked on every change.
#
#   deploy/docker/build.sh OUT     lays out the image's root filesystem under OUT:
#     OUT/usr/local/bin/claimgate           the lean production binary (no `dev` feature)
#     OUT/etc/claimgate/claimgate.toml      the default config
#     OUT/etc/claimgate/policies/*.toml     the example policies
set -euo pipefail
out=${1:?usage: build.sh OUT}
cd "$(dirname "$0")/../.."
cargo build --release --locked --no-default-features --bin claimgate
install -D -m 0755 target/release/claimgate "$out/usr/local/bin/claimgate"
# Line tables are for profiling on the build machine; symbol names stay for backtraces.
strip --strip-debug "$out/usr/local/bin/claimgate"
install -D -m 0644 deploy/docker/claimgate.toml "$out/etc/claimgate/claimgate.toml"
install -d "$out/etc/claimgate/policies"
install -m 0644 policies/*.toml "$out/etc/claimgate/policies/"

# What the image promises, checked on what was laid out:
bin="$out/usr/local/bin/claimgate"
"$bin" --version
size=$(stat -c %s "$bin")
echo "build.sh: binary $((size / 1024 / 1024)) MiB"
[ "$size" -lt $((48 * 1024 * 1024)) ] || { echo "build.sh: the binary outgrew 48 MiB" >&2; exit 1; }
# the production binary has no dev tooling
if "$bin" dev --help >/dev/null 2>&1; then echo "build.sh: the image's binary runs \`dev\`" >&2; exit 1; fi
# the default config and policies are accepted (secrets as the Secret would give them)
CLAIMGATE_UPLOAD_ID_KEY=$(head -c 32 /dev/urandom | base64) CLAIMGATE_CLIENT_SECRET=example \
  "$bin" validate --config "$out/etc/claimgate/claimgate.toml"
echo "build.sh: image root laid out in $out"
