"""The deployment files: Dockerfiles, Kubernetes manifests, systemd units and the Lambda zip.

Each is checked for what it must contain, and then, where this machine can, run for real:
the Kubernetes manifests against the Kubernetes OpenAPI schemas (kubernetes-validate, offline)
and their commands and probes against a real `sluicegate`, the systemd units with
`systemd-analyze verify`, the Lambda zip by importing the handler from the unpacked zip alone,
and the images with podman when podman can build and run containers here.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import importlib
import importlib.metadata
import json
import os
import pwd
import re
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sluicegate import load_project
from sluicegate.generate import create_schema
from support import SLUICEGATE, files, write_project

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes release the manifests are meant for


# ---------------------------------------------------------------------------- Dockerfiles


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """The instructions of a Dockerfile as ``(INSTRUCTION, arguments)``, continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        out.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    return out


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The instructions split into build stages (each starts with FROM)."""
    out: list[list[tuple[str, str]]] = []
    for keyword, args in instructions:
        if keyword == "FROM":
            out.append([])
        if out:
            out[-1].append((keyword, args))
    return out


def last(stage: list[tuple[str, str]], keyword: str) -> str:
    found = [args for k, args in stage if k == keyword]
    assert found, f"no {keyword} in the stage"
    return found[-1]


def test_dockerfile_builds_a_non_root_service_image_from_python_slim() -> None:
    instructions = dockerfile(ROOT / "Dockerfile")
    assert instructions[0] == ("ARG", "PYTHON_IMAGE=python:3.11-slim")
    build, final = stages(instructions)
    assert build[0] == ("FROM", "${PYTHON_IMAGE} AS build") and final[0] == ("FROM", "${PYTHON_IMAGE}")
    assert any(k == "RUN" and re.search(r"pip install \"\.\[fast,service\]\"", a) for k, a in build)
    user = last(final, "USER")
    assert user.split(":")[0] not in ("root", "0") and user.split(":")[0].isdigit()
    assert json.loads(last(final, "ENTRYPOINT")) == ["sluicegate"]
    assert json.loads(last(final, "CMD")) == ["serve", "--host", "0.0.0.0", "--port", "8000"]
    assert last(final, "EXPOSE") == "8000"
    health = last(final, "HEALTHCHECK")
    options, _, command = health.partition(" CMD ")
    assert "--interval=" in options and "--timeout=" in options
    check = json.loads(command)
    assert (
        check[:2] == ["python", "-c"] and "urllib.request.urlopen('http://127.0.0.1:8000/healthz'" in check[2]
    )
    assert "SLUICEGATE_PROJECT=/project" in last(final, "ENV")


def test_lambda_dockerfile_runs_the_handler_with_the_runtime_interface_client() -> None:
    build, final = stages(dockerfile(DEPLOY / "lambda" / "Dockerfile"))
    assert any(k == "RUN" and "awslambdaric" in a and '".[fast]"' in a for k, a in build)
    assert json.loads(last(final, "ENTRYPOINT")) == ["/opt/sluicegate/bin/python", "-m", "awslambdaric"]
    [handler] = json.loads(last(final, "CMD"))
    module, _, name = handler.rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))
    assert "SLUICEGATE_PROJECT=/var/task/project" in last(final, "ENV")
    assert last(final, "USER").split(":")[0] not in ("root", "0")


def test_dockerignore_keeps_what_the_builds_copy() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {".git", ".venv", "tests"} <= set(patterns)
    for path in (ROOT / "Dockerfile", DEPLOY / "lambda" / "Dockerfile"):
        for keyword, args in dockerfile(path):
            if keyword != "COPY" or args.startswith("--from"):
                continue
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), f"{path}: COPY {source} does not exist"
                ignored = [p for p in patterns if fnmatch.fnmatch(source, p.removeprefix("**/"))]
                assert not ignored, f"{path}: COPY {source} is excluded by .dockerignore {ignored}"


# ---------------------------------------------------------------------------- podman (optional)


@functools.cache
def _podman_setup() -> tuple[list[str], list[str], str] | str:
    """``(podman + global options, run/build options, base image)`` that build and run
    containers on this machine, or the reason they cannot."""
    exe = shutil.which("podman")
    if exe is None:
        return "podman is not installed (apt-get install podman)"

    def attempt(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, check=False)

    base = next(
        (
            image
            for image in ("docker.io/library/python:3.11-slim", "localhost/sluicegate-test-python:3.11")
            if attempt(["image", "exists", image]).returncode == 0
        ),
        None,
    )
    if base is None:
        pulled = attempt(["pull", "docker.io/library/python:3.11-slim"])
        if pulled.returncode != 0:
            tail = (pulled.stderr.strip().splitlines() or ["no output"])[-1]
            return (
                f"the base image python:3.11-slim cannot be pulled ({tail}); to test with a local "
                "Debian 12 base (Python 3.11) instead: mmdebstrap --variant=minbase "
                "--include=python3,python3-venv,python-is-python3,ca-certificates bookworm - | "
                "podman import - localhost/sluicegate-test-python:3.11"
            )
        base = "docker.io/library/python:3.11-slim"
    # Work-arounds for hosts such as this CI VM: crun refuses cgroup v1 "hybrid" mounts (runc
    # does not), and without CAP_SYS_RESOURCE podman's default rlimits cannot be set.
    nofile = min(os_limit("RLIMIT_NOFILE"), 1 << 20)
    limits = ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096"]
    errors = []
    for global_options, options in (([], []), (["--runtime", "runc"], []), (["--runtime", "runc"], limits)):
        probe = attempt([*global_options, "run", "--rm", *options, base, "python", "-c", "print(42)"])
        if probe.returncode == 0 and probe.stdout.strip() == "42":
            return [exe, *global_options], options, base
        errors.append((probe.stderr.strip().splitlines() or ["no output"])[-1])
    return f"podman cannot run a container here: {' / '.join(errors)}"


def os_limit(name: str) -> int:
    import resource

    soft, _hard = resource.getrlimit(getattr(resource, name))
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


@pytest.fixture(scope="module")
def podman() -> tuple[list[str], list[str], str]:
    """podman, when it can build and run containers on this machine.

    Building and running the images is an OPTIONAL capability: without podman, without a
    base image, or without the kernel features podman needs, these tests SKIP with the reason,
    also under CI=true. They are not a missing test service; the Dockerfiles' contents are
    still checked by the tests above.
    """
    setup = _podman_setup()
    if isinstance(setup, str):
        pytest.skip(f"!!! OPTIONAL CAPABILITY MISSING, container tests skipped: {setup}")
    return setup


def _build(podman: tuple[list[str], list[str], str], dockerfile_path: Path, tag: str) -> None:
    cmd, options, base = podman
    # The build's pip uses this machine's index, proxy and CA, as the rest of the suite does.
    mounts = [
        arg
        for path in ("/etc/pip.conf", "/etc/xdg/pip", "/etc/ssl/certs/ca-certificates.crt")
        if Path(path).exists()
        for arg in ("-v", f"{path}:{path}:ro")
    ]
    proc = subprocess.run(
        [
            *cmd, "build", "--format", "docker", *options, *mounts,
            "--build-arg", f"PYTHON_IMAGE={base}", "-f", str(dockerfile_path), "-t", tag, str(ROOT),
        ],
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"podman build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def service_image(podman: tuple[list[str], list[str], str]) -> Iterator[str]:
    tag = f"localhost/sluicegate-pytest:{os.getpid()}"
    _build(podman, ROOT / "Dockerfile", tag)
    yield tag
    subprocess.run([*podman[0], "rmi", "-f", tag], capture_output=True, check=False)


def _run(
    podman: tuple[list[str], list[str], str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    cmd, options, _ = podman
    return subprocess.run(
        [*cmd, "run", "--rm", *options, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_image_runs_the_cli_as_a_non_root_user(
    podman: tuple[list[str], list[str], str], service_image: str
) -> None:
    version = _run(podman, service_image, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"sluicegate, version {importlib.metadata.version('sluicegate')}"
    script = "sluicegate -C /tmp/p init /tmp/p && sluicegate -C /tmp/p tasks --json && id -u"
    init = _run(podman, "--entrypoint", "sh", service_image, "-c", script)
    assert init.returncode == 0, init.stderr
    assert "wrote /tmp/p/sluicegate.toml" in init.stdout and init.stdout.strip().endswith("10001")
    listed = json.loads(init.stdout[init.stdout.index("\n[") : init.stdout.rindex("]") + 1])
    assert [t["name"] for t in listed] == ["openaq"]


def test_image_healthcheck_follows_healthz(
    podman: tuple[list[str], list[str], str], service_image: str
) -> None:
    """The image's HEALTHCHECK passes while /healthz answers 200 and fails when it answers 503."""
    cmd, options, _ = podman
    serve = "sluicegate init /tmp/p > /dev/null && exec sluicegate -C /tmp/p serve --host 0.0.0.0 --insecure-no-auth"
    for source, healthy in (("", True), ("postgresql://nobody@127.0.0.1:1/none", False)):
        env = ["-e", f"SLUICEGATE_SOURCE__URL={source}"] if source else []
        started = subprocess.run(
            [*cmd, "run", "-d", *options, "--network", "none", *env, "--entrypoint", "sh", service_image, "-c", serve],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        container = started.stdout.strip()
        try:
            results = []
            for _ in range(20):  # the service needs a moment to start listening
                check = subprocess.run(
                    [*cmd, "healthcheck", "run", container], capture_output=True, text=True
                )
                results.append(check.returncode)
                if check.returncode == 0 or (not healthy and len(results) >= 5):
                    break
                time.sleep(1)
            assert (results[-1] == 0) is healthy, results
        finally:
            subprocess.run([*cmd, "rm", "-f", container], capture_output=True, check=False)


def test_lambda_image_runs_the_handler(podman: tuple[list[str], list[str], str]) -> None:
    """The Lambda image has the runtime interface client and runs a scheduled event."""
    tag = f"localhost/sluicegate-lambda-pytest:{os.getpid()}"
    _build(podman, DEPLOY / "lambda" / "Dockerfile", tag)
    try:
        handler = (
            "import json, time, awslambdaric\n"
            "from sluicegate.aws_lambda import handler\n"
            "class Context:\n"
            "    aws_request_id = 'r-1'; function_name = 'f'\n"
            "    def get_remaining_time_in_millis(self): return 900_000\n"
            "result = handler({'detail-type': 'Scheduled Event', 'source': 'aws.events', 'detail': {}}, Context())\n"
            "print('RESULT', json.dumps(result))\n"
        )
        script = (
            "set -e; sluicegate init /tmp/p > /dev/null; "
            "python -c 'from sluicegate.generate import create_schema as c; c(\"sqlite:////tmp/p/measurements.db\")'; "
            "sluicegate -C /tmp/p install > /dev/null; "
            "sluicegate generate --db sqlite:////tmp/p/measurements.db --rows 2000 --locations 4 > /dev/null; "
            f"SLUICEGATE_PROJECT=/tmp/p python -c {shlex.quote(handler)}"
        )
        proc = _run(podman, "--entrypoint", "sh", tag, "-c", script)
        assert proc.returncode == 0, proc.stderr
        [result] = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        assert result["ok"] is True and result["tasks"][0]["exported"] > 0
    finally:
        subprocess.run([*podman[0], "rmi", "-f", tag], capture_output=True, check=False)


# ---------------------------------------------------------------------------- Kubernetes


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every resource in deploy/kubernetes, by (kind, name)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    """kubernetes-validate carries the schemas, so this works offline; strict mode rejects
    misspelt or misplaced fields, which kubectl would drop silently with a warning."""
    import kubernetes_validate

    resources = manifests()
    assert set(resources) == {
        ("ConfigMap", "sluicegate-project"),
        ("Secret", "sluicegate"),
        ("ServiceAccount", "sluicegate"),
        ("Deployment", "sluicegate"),
        ("Service", "sluicegate"),
        ("CronJob", "sluicegate-run"),
    }
    for (kind, name), doc in resources.items():
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind}/{name} does not validate against Kubernetes {K8S_VERSION}: {exc}")
    broken = json.loads(json.dumps(resources[("CronJob", "sluicegate-run")]))
    broken["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["argz"] = ["run"]
    with pytest.raises(kubernetes_validate.ValidationError, match="argz"):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def _pod(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]
    pod: dict[str, Any] = (spec["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else spec)["template"][
        "spec"
    ]
    return pod


def test_manifests_hang_together() -> None:
    """What the schemas cannot check: enums, names that refer to each other, the probes."""
    resources = manifests()
    cron, deploy = resources[("CronJob", "sluicegate-run")], resources[("Deployment", "sluicegate")]
    config, secret = resources[("ConfigMap", "sluicegate-project")], resources[("Secret", "sluicegate")]
    service = resources[("Service", "sluicegate")]
    assert cron["spec"]["concurrencyPolicy"] == "Allow"  # overlapping runs are safe (cronjob.yaml)
    [job_container] = _pod(cron)["containers"]
    assert job_container["args"][:3] == ["run", "--max-runtime", "14m"]
    assert cron["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] > 14 * 60
    assert _pod(cron)["restartPolicy"] in ("Never", "OnFailure")
    [container] = _pod(deploy)["containers"]
    assert container["args"] == ["serve", "--host", "0.0.0.0", "--port", "8000"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] != "/healthz"
    assert (
        container["ports"][0]["containerPort"] == 8000 and service["spec"]["ports"][0]["targetPort"] == "http"
    )
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert (
        deploy["spec"]["selector"]["matchLabels"].items()
        <= deploy["spec"]["template"]["metadata"]["labels"].items()
    )
    assert {"SLUICEGATE_API_TOKEN", "SLUICEGATE_SOURCE__URL"} <= set(secret["stringData"])
    for doc in (cron, deploy):
        pod = _pod(doc)
        [c] = pod["containers"]
        assert c["image"] == container["image"]
        assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
        assert c["envFrom"] == [{"secretRef": {"name": "sluicegate"}}]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
        assert pod["serviceAccountName"] == "sluicegate"
        volume = next(v for v in pod["volumes"] if v["name"] == "project")
        assert volume["configMap"]["name"] == "sluicegate-project"
        assert {i["key"] for i in volume["configMap"]["items"]} == set(config["data"])
        mount = next(m for m in c["volumeMounts"] if m["name"] == "project")
        assert {"name": "SLUICEGATE_PROJECT", "value": mount["mountPath"]} in c["env"]


def _materialise(target: Path) -> tuple[Path, dict[str, str], dict[str, Any]]:
    """The project folder as the pods see it (from the ConfigMap and its volume items), the
    environment from the Secret, and the Deployment's container."""
    resources = manifests()
    data = resources[("ConfigMap", "sluicegate-project")]["data"]
    deploy = resources[("Deployment", "sluicegate")]
    volume = next(v for v in _pod(deploy)["volumes"] if v["name"] == "project")
    for item in volume["configMap"]["items"]:
        path = target / item["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data[item["key"]])
    env = dict(resources[("Secret", "sluicegate")]["stringData"])
    return target, env, _pod(deploy)["containers"][0]


def test_configmap_project_runs_the_cronjob_command(tmp_path: Path) -> None:
    """The ConfigMap is a working project: with the source pointed at a SQLite database and the
    destination at a folder, the CronJob's exact arguments export the generated data."""
    root, env, _ = _materialise(tmp_path / "project")
    db = f"sqlite:///{tmp_path / 'source.db'}"
    env.update(SLUICEGATE_SOURCE__URL=db, SLUICEGATE_DESTINATION__URL=str(tmp_path / "out"))
    project = load_project(root, env)
    assert sorted(project.tasks) == ["openaq"] and project.settings.ledger_schema == "sluicegate"
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    run_env = {**base, **env, "SLUICEGATE_PROJECT": str(root)}

    def sluicegate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SLUICEGATE, *args], env=run_env, capture_output=True, text=True, timeout=300)

    create_schema(db)  # the tables must exist before the triggers
    assert sluicegate("install").returncode == 0
    assert sluicegate("generate", "--db", db, "--rows", "3000", "--locations", "5").returncode == 0
    args = _pod(manifests()[("CronJob", "sluicegate-run")])["containers"][0]["args"]
    proc = sluicegate(*args)
    assert proc.returncode == 0, proc.stderr
    [summary] = json.loads(proc.stdout)
    assert summary["exported"] > 0 and len(files(tmp_path / "out")) == summary["exported"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@contextlib.contextmanager
def _serving(args: list[str], env: dict[str, str]) -> Iterator[str]:
    port = _free_port()
    args = [*args[: args.index("--port") + 1], str(port)]
    args[args.index("--host") + 1] = "127.0.0.1"
    proc = subprocess.Popen([SLUICEGATE, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_deployment_probes_against_the_real_service(tmp_path: Path) -> None:
    """The Deployment's container, started as written (with its Secret and ConfigMap): ready and
    alive with a reachable database; with the database gone, not ready but still alive, so
    Kubernetes takes it out of the Service instead of restarting it in a loop."""
    root, env, container = _materialise(tmp_path / "project")
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    env = {
        **base,
        **env,
        "SLUICEGATE_PROJECT": str(root),
        "SLUICEGATE_DESTINATION__URL": str(tmp_path / "out"),
    }
    ready, alive = (
        container["readinessProbe"]["httpGet"]["path"],
        container["livenessProbe"]["httpGet"]["path"],
    )
    sqlite3.connect(tmp_path / "source.db").close()  # a source that is there (/healthz no longer makes it)
    good = {**env, "SLUICEGATE_SOURCE__URL": f"sqlite:///{tmp_path / 'source.db'}"}
    with _serving(container["args"], good) as url:
        assert (_status(url + ready), _status(url + alive)) == (200, 200)
    gone = {**env, "SLUICEGATE_SOURCE__URL": "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"}
    with _serving(container["args"], gone) as url:
        assert (_status(url + ready), _status(url + alive)) == (503, 200)


# ---------------------------------------------------------------------------- systemd


def _units(target: Path, project: Path) -> list[Path]:
    """Copies of the units that can run on this machine: this interpreter's sluicegate, this user."""
    user = pwd.getpwuid(os.getuid())
    group = subprocess.run(["id", "-gn"], capture_output=True, text=True, check=True).stdout.strip()
    target.mkdir()
    env_file = target / "env"
    env_file.write_text("")
    out = []
    for unit in sorted((DEPLOY / "systemd").iterdir()):
        text = unit.read_text().replace("/opt/sluicegate/bin/sluicegate", SLUICEGATE)
        text = re.sub(r"(?m)^User=.*$", f"User={user.pw_name}", text)
        text = re.sub(r"(?m)^Group=.*$", f"Group={group}", text)
        text = re.sub(r"(?m)^EnvironmentFile=.*$", f"EnvironmentFile={env_file}", text)
        text = text.replace("SLUICEGATE_PROJECT=/etc/sluicegate/project", f"SLUICEGATE_PROJECT={project}")
        (target / unit.name).write_text(text)
        out.append(target / unit.name)
    return out


def test_systemd_units_verify_and_their_commands_run(tmp_path: Path) -> None:
    units = _units(tmp_path / "units", tmp_path / "proj")
    assert sorted(u.name for u in units) == [
        "sluicegate-run.service",
        "sluicegate-run.timer",
        "sluicegate-serve.service",
    ]
    if shutil.which("systemd-analyze"):
        proc = subprocess.run(
            ["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True, timeout=60
        )
        complaints = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 0 and not complaints, proc.stderr
        calendar = re.search(r"(?m)^OnCalendar=(.*)$", units[1].read_text())
        assert calendar is not None
        normalised = subprocess.run(
            ["systemd-analyze", "calendar", calendar.group(1)], capture_output=True, text=True
        )
        assert "*-*-* *:00/15:00" in normalised.stdout
    run_unit = units[0].read_text()
    # A oneshot, started by the timer of the same name.
    assert re.search(r"(?m)^Type=oneshot$", run_unit) and units[1].stem == units[0].stem
    # The unit's own ExecStart, run as systemd would (its Environment= lines, no shell).
    write_project(
        tmp_path / "proj", source=f"sqlite:///{tmp_path / 's.db'}", destination=str(tmp_path / "out")
    )
    exec_start = re.search(r"(?m)^ExecStart=(.*)$", run_unit)
    assert exec_start is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    for match in re.finditer(r"(?m)^Environment=(\w+)=(.*)$", run_unit):
        env[match.group(1)] = match.group(2)
    create_schema(f"sqlite:///{tmp_path / 's.db'}")
    subprocess.run([SLUICEGATE, "-C", str(tmp_path / "proj"), "install"], check=True, capture_output=True)
    subprocess.run(
        [SLUICEGATE, "generate", "--db", f"sqlite:///{tmp_path / 's.db'}", "--rows", "500", "--locations", "2"],
        check=True, capture_output=True,
    )  # fmt: skip
    proc = subprocess.run(
        shlex.split(exec_start.group(1)), env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert files(tmp_path / "out")  # the run exported the generated days


# ---------------------------------------------------------------------------- the Lambda zip


@pytest.mark.slow
def test_lambda_zip_is_self_contained_and_runs_the_handler(tmp_path: Path) -> None:
    """deploy/lambda/build.sh downloads manylinux2014 wheels for CPython 3.11 (from PyPI, like
    `make venv`), and the zip holds everything: the handler is imported from the unpacked zip by
    an interpreter that sees no site-packages, and runs a scheduled event on the bundled project."""
    project = write_project(
        tmp_path / "proj", source=f"sqlite:///{tmp_path / 's.db'}", destination=str(tmp_path / "out")
    )
    create_schema(f"sqlite:///{tmp_path / 's.db'}")
    subprocess.run([SLUICEGATE, "-C", str(project), "install"], check=True, capture_output=True)
    subprocess.run(
        [SLUICEGATE, "generate", "--db", f"sqlite:///{tmp_path / 's.db'}", "--rows", "2000", "--locations", "4"],
        check=True, capture_output=True,
    )  # fmt: skip
    out = tmp_path / "function.zip"
    build = subprocess.run(
        [str(DEPLOY / "lambda" / "build.sh"), "--project", str(project), "--out", str(out)],
        env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    if build.returncode != 0 and "Could not find a version" in build.stderr:
        pytest.fail(f"build.sh could not download the wheels (is PyPI reachable?):\n{build.stderr[-2000:]}")
    assert build.returncode == 0, build.stderr[-3000:]
    task_root = tmp_path / "task"
    with zipfile.ZipFile(out) as zf:
        zf.extractall(task_root)
    assert (task_root / "project" / "sluicegate.toml").is_file()
    assert sum(p.stat().st_size for p in task_root.rglob("*") if p.is_file()) < 250 * 1024 * 1024
    script = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(task_root)!r})\n"
        "from sluicegate.aws_lambda import handler\n"
        "import pyarrow, psycopg, boto3, sluicegate\n"
        "class Context:\n"
        "    aws_request_id = 'r-1'; function_name = 'f'\n"
        "    def get_remaining_time_in_millis(self): return 600_000\n"
        "result = handler({'detail-type': 'Scheduled Event', 'detail': {}}, Context())\n"
        "print('RESULT', json.dumps({'result': result, 'from': [m.__file__ for m in (pyarrow, psycopg, boto3, sluicegate)]}))\n"
    )
    clean_env = {"PATH": os.environ["PATH"], "LAMBDA_TASK_ROOT": str(task_root), "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-S", "-E", "-c", script], env=clean_env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    [line] = [json.loads(x[7:]) for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert all(path.startswith(str(task_root)) for path in line["from"]), line["from"]
    assert line["result"]["ok"] is True and line["result"]["tasks"][0]["exported"] > 0
