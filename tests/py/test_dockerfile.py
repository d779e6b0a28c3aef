"""The Dockerfile, held to what it builds.

No Docker engine runs here, so CI runs the build stage's script (deploy/docker/build.sh) on
every change. What the final stage adds (base image, user, ports, health check, entry point)
is checked here against that script's layout, the default config it installs, the toolchain
the crate asks for, and the binary's own commands, so the file cannot drift from them.
"""

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy/docker/Dockerfile"
BUILD_SH = ROOT / "deploy/docker/build.sh"
CONFIG = ROOT / "deploy/docker/claimgate.toml"
BIN = os.environ.get("CLAIMGATE_BIN", str(ROOT / "target/debug/claimgate"))


def instructions():
    """(INSTRUCTION, argument text) pairs, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        word, _, rest = text.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "a continued line never ends"
    return out


def stages():
    """Instructions grouped by stage, in order."""
    groups = []
    for ins, arg in instructions():
        if ins == "FROM":
            groups.append([])
        groups[-1].append((ins, arg))
    return groups


def exec_form(arg):
    assert arg.startswith("["), f"exec form expected (no shell in distroless): {arg}"
    return json.loads(arg)


def installed_paths():
    """OUT-relative destinations build.sh installs."""
    return set(re.findall(r'"\$out(/[^"]+)"', BUILD_SH.read_text()))


def port(listen):
    return int(listen.rsplit(":", 1)[1])


def test_two_stages_the_build_stage_is_build_sh_and_the_final_stage_only_copies_its_output():
    build, final = stages()
    assert build[0][1].endswith(" AS build"), build[0]
    runs = [a for i, a in build if i == "RUN"]
    assert runs == ["./deploy/docker/build.sh /image"], runs
    copies = [a for i, a in final if i == "COPY"]
    assert copies == ["--from=build /image/ /"], copies
    assert not [a for i, a in final if i == "RUN"], "the final stage has no shell to RUN in"


def test_the_toolchain_and_the_base_image_match():
    build, final = stages()
    image = build[0][1].split()[0]
    m = re.fullmatch(r"rust:(\d+\.\d+)-(\w+)", image)
    assert m, image
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    assert m.group(1) == cargo["package"]["rust-version"], "the build image's Rust is the crate's"
    # the binary links the build image's glibc: the runtime must be the same Debian release
    debian = {"bookworm": "debian12", "trixie": "debian13"}[m.group(2)]
    base = final[0][1]
    assert base == f"gcr.io/distroless/cc-{debian}:nonroot", base


def test_it_runs_as_65532_with_the_binary_and_config_build_sh_lays_out():
    _, final = stages()
    args = dict((i, a) for i, a in final)
    assert args["USER"] == "65532:65532"
    entry = exec_form(args["ENTRYPOINT"])
    cmd = exec_form(args["CMD"])
    paths = installed_paths()
    assert entry[0] in paths, f"{entry[0]} is not what build.sh installs: {paths}"
    assert cmd[:2] == ["serve", "--config"] and cmd[2] in paths, cmd
    assert cmd[2] == "/etc/claimgate/claimgate.toml"
    assert "/etc/claimgate/policies" in BUILD_SH.read_text()
    assert args["WORKDIR"] == "/etc/claimgate", "the default config's relative policies dir"
    assert tomllib.loads(CONFIG.read_text())["policies"]["dir"] == "policies"


def test_ports_and_the_health_check_are_the_default_configs():
    _, final = stages()
    config = tomllib.loads(CONFIG.read_text())
    proxy, admin = port(config["server"]["listen"]), port(config["admin"]["listen"])
    exposed = {int(p) for i, a in final if i == "EXPOSE" for p in a.split()}
    assert exposed == {proxy, admin}
    [health] = [a for i, a in final if i == "HEALTHCHECK"]
    options, _, command = health.partition(" CMD ")
    probe = exec_form(command.strip())
    entry = exec_form(dict((i, a) for i, a in final)["ENTRYPOINT"])
    assert probe[0] == entry[0] and probe[1] == "probe", probe
    # liveness: readiness drops while the IdP or audit sink is down, and an engine that
    # replaces unhealthy containers would then replace every one of them
    assert probe[2] == f"http://127.0.0.1:{admin}/healthz", probe
    assert "--timeout=" in options and "--interval=" in options, options


def test_the_commands_the_image_runs_exist_in_the_binary():
    _, final = stages()
    args = dict((i, a) for i, a in final)
    cmd = exec_form(args["CMD"])
    serve = subprocess.run([BIN, cmd[0], "--help"], capture_output=True, text=True)
    assert serve.returncode == 0 and cmd[1] in serve.stdout, serve.stdout + serve.stderr
    probe = subprocess.run([BIN, "probe", "--help"], capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    # the health check fails on a port nobody listens on (it can fail)
    dead = subprocess.run([BIN, "probe", "http://127.0.0.1:9/healthz"], capture_output=True, text=True)
    assert dead.returncode != 0


def test_the_build_context_leaves_out_builds_venvs_and_tools():
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for heavy in ("target", ".venv", ".tools", ".git", "tests/oidc/node_modules"):
        assert heavy in ignored, f"{heavy} would be sent to the Docker daemon"


def test_the_dockerfile_parser_sees_what_is_there():
    # A misread file would make every check above vacuous.
    names = [i for i, _ in instructions()]
    assert names.count("FROM") == 2
    assert {"RUN", "COPY", "USER", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD"} <= set(names)
