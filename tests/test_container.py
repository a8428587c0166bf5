"""The image (Dockerfile), compose.yaml and constraints.txt: consistent with the code, and the image works.

The first tests read the files and always run, in milliseconds. The last builds the image and runs it with a
real container runtime (podman, else docker), which takes minutes; it is marked `container` (`-m 'not
container'` leaves it out) and skips, saying why, where no runtime works or the base image is not on this machine
(CONTAINER_TEST_BASE names another base: README, "Running in a container", builds one without a registry).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from starlette.config import Environ

from engine.config import load_settings
from tests.conftest import FIXTURES, ROOT

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
CONSTRAINTS = ROOT / "constraints.txt"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


# -- the files agree with the code and with each other --------------------------------------------------------


def dockerfile_instructions(stage: int = -1) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of one stage of the Dockerfile (the last: the image that runs), continuation
    lines joined and comments dropped; the ARGs before the first FROM belong to every stage."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    stages: list[list[tuple[str, str]]] = [[]]
    for line in lines:
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages[0] + stages[1:][stage]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, arguments in dockerfile_instructions():
        if instruction == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", arguments))
    return env


def exec_form(instruction: str) -> list[str]:
    """The JSON array of an exec-form instruction; a shell-form one fails here (SIGTERM would reach /bin/sh)."""
    (arguments,) = [a for i, a in dockerfile_instructions() if i == instruction]
    return json.loads(arguments.split(" CMD ")[-1] if instruction == "HEALTHCHECK" else arguments)


def setting_names() -> set[str]:
    """The names engine/config.py reads: whatever load_settings asks its environment for."""

    class Recording(Environ):
        def __init__(self) -> None:
            super().__init__({})
            self.asked: set[str] = set()

        def __contains__(self, key: object) -> bool:
            self.asked.add(str(key))
            return super().__contains__(key)

        def __getitem__(self, key: str) -> str:
            self.asked.add(key)
            return super().__getitem__(key)

    environ = Recording()
    load_settings(env_file=None, environ_=environ)
    return environ.asked


def test_the_outbox_is_on_the_volume_and_the_mappings_where_the_build_validated_them():
    env = dockerfile_env()
    volumes = [a for i, a in dockerfile_instructions() if i == "VOLUME"]
    assert volumes == [str(Path(env["ENGINE_DB"]).parent)], "ENGINE_DB outside the VOLUME dies with the container"
    build = dockerfile_instructions(stage=0)
    assert ("COPY", f"mappings {env['ENGINE_MAPPINGS']}") in build
    validate = [a for i, a in build if i == "RUN" and "engine validate" in a]
    assert validate, "the build stage must run `engine validate`, so that a broken mapping fails the build"
    assert f"cd {Path(env['ENGINE_MAPPINGS']).parent}" in validate[0]
    # The samples `engine validate` renders against: tests/fixtures beside the mappings folder.
    assert ("COPY", f"tests/fixtures {Path(env['ENGINE_MAPPINGS']).parent}/tests/fixtures") in build
    assert {"ENGINE_DB", "ENGINE_MAPPINGS"} <= setting_names()


def test_the_image_runs_as_a_user_listens_on_every_address_and_checks_the_port_it_listens_on():
    (user,) = [a for i, a in dockerfile_instructions() if i == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    entrypoint, command = exec_form("ENTRYPOINT"), exec_form("CMD")
    assert entrypoint == ["engine"]
    assert command[0] == "serve"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    port = command[command.index("--port") + 1]
    assert ("EXPOSE", port) in dockerfile_instructions()
    healthcheck = exec_form("HEALTHCHECK")
    assert healthcheck[-1].count(f"http://127.0.0.1:{port}/healthz") == 1
    assert "curl" not in " ".join(healthcheck)


def test_the_image_installs_what_constraints_txt_pins():
    installs = [a for i, a in dockerfile_instructions(stage=0) if i == "RUN" and "pip install" in a]
    assert len(installs) == 1 and "-c constraints.txt" in installs[0], installs
    assert ("COPY", "pyproject.toml README.md LICENSE constraints.txt ./") in dockerfile_instructions(stage=0)


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version.strip(), f"constraints.txt: {line!r} is not pinned with =="
            found[canonicalize_name(name)] = version.strip()
    return found


def test_constraints_pin_every_dependency_pyproject_declares_within_its_range():
    pinned = pins()
    declared = [Requirement(text) for text in PYPROJECT["project"]["dependencies"]]
    declared += [Requirement(text) for text in PYPROJECT["project"]["optional-dependencies"]["postgres"]]
    for requirement in declared:
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"constraints.txt does not pin {requirement.name} (regenerate it: see its header)"
        assert requirement.specifier.contains(pinned[name]), f"{name}=={pinned[name]} is outside {requirement}"
    # The extras' own packages (uvicorn[standard], psycopg[binary,pool]) are pinned too.
    assert {"uvloop", "httptools", "psycopg-binary", "psycopg-pool"} <= pinned.keys()
    assert "aircall-segment" not in pinned, "the project itself is installed from the source, not pinned"


def test_compose_names_real_settings_and_waits_for_a_healthy_database():
    compose = yaml.safe_load(COMPOSE.read_text())
    db, bridge = compose["services"]["db"], compose["services"]["bridge"]
    assert set(bridge["environment"]) <= setting_names(), "compose.yaml sets a name engine/config.py never reads"
    assert bridge["environment"]["ENGINE_MAPPINGS"] == dockerfile_env()["ENGINE_MAPPINGS"]
    # The URL the outbox reads: the db service, its user and database, the password compose puts in both.
    engine_db = bridge["environment"]["ENGINE_DB"]
    url = re.fullmatch(r"postgresql://(\w+):\$\{POSTGRES_PASSWORD\}@(\w+):5432/(\w+)", engine_db)
    assert url, engine_db
    assert url.groups() == (db["environment"]["POSTGRES_USER"], "db", db["environment"]["POSTGRES_DB"])
    assert db["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert bridge["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert "pg_isready" in db["healthcheck"]["test"]
    assert "db:/var/lib/postgresql/data" in db["volumes"]
    assert bridge["env_file"] == ".env" and ".env" in (ROOT / ".gitignore").read_text().split()
    # compose's default base is the Dockerfile's: one default for real users, wherever they build from.
    (arg,) = [a for i, a in dockerfile_instructions() if i == "ARG" and a.startswith("BASE=")]
    assert bridge["build"]["args"]["BASE"] == "${BASE:-" + arg.removeprefix("BASE=") + "}"


def test_the_build_context_leaves_out_the_virtual_environment_the_outbox_secrets_and_git():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "var", ".env", ".git", "!tests/fixtures"} <= set(ignored)


def test_the_license_is_the_one_pyproject_declares():
    assert PYPROJECT["project"]["license"] == {"text": "MIT"}
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "Copyright (c) 2026 the aircall-segment authors" in text


# -- the image, built and run ---------------------------------------------------------------------------------

TOKEN = json.loads((FIXTURES / "call.ended.json").read_text())["token"]


def default_base() -> str:
    (arg,) = [a for i, a in dockerfile_instructions() if i == "ARG" and a.startswith("BASE=")]
    return arg.removeprefix("BASE=")


def quietly(*command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, 124, "", f"no answer in {timeout:g} s")


def container_runtime(base: str) -> str:
    """podman or docker, whichever works here and has the base image; otherwise the test skips and says why."""
    reasons = []
    for runtime in ("podman", "docker"):
        if shutil.which(runtime) is None:
            reasons.append(f"no {runtime}")
            continue
        info = quietly(runtime, "info")
        if info.returncode != 0:
            reasons.append(f"`{runtime} info` fails ({(info.stderr.strip().splitlines() or ['?'])[-1][:120]})")
            continue
        if quietly(runtime, "image", "inspect", base).returncode != 0:
            reasons.append(f"{runtime} has no image {base} (no registry is asked; CONTAINER_TEST_BASE names another)")
            continue
        return runtime
    pytest.skip("no container runtime to build the image with: " + "; ".join(reasons))


@dataclass
class Container:
    runtime: str
    name: str
    port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def exec(self, *command: str) -> str:
        done = quietly(self.runtime, "exec", self.name, *command)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def inspect(self, template: str) -> str:
        return quietly(self.runtime, "inspect", "--format", template, self.name).stdout.strip()


@pytest.fixture(scope="module")
def image() -> Iterator[tuple[str, str]]:
    base = os.environ.get("CONTAINER_TEST_BASE") or default_base()
    runtime = container_runtime(base)
    tag = f"localhost/aircall-segment-test:{uuid.uuid4().hex[:8]}"
    # podman's default OCI format has no HEALTHCHECK: docker's format keeps it.
    build = [runtime, "build", "--build-arg", f"BASE={base}", "-t", tag, str(ROOT)]
    if runtime == "podman":
        build[2:2] = ["--format", "docker"]
    done = quietly(*build, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    yield runtime, tag
    quietly(runtime, "rmi", "-f", tag, timeout=120)


def run_container(runtime: str, tag: str, volume: str) -> Container:
    name = f"aircall-segment-test-{uuid.uuid4().hex[:8]}"
    done = quietly(
        runtime, "run", "-d", "--name", name, "-p", "127.0.0.1::8000", "-v", f"{volume}:/var/lib/aircall-segment",
        # Checked every 2 s rather than 30, so that docker reports it within the test; podman runs it on demand.
        "--health-interval", "2s", "-e", f"AIRCALL_WEBHOOK_TOKEN={TOKEN}", tag,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    mapped = quietly(runtime, "port", name, "8000").stdout.split()[0]  # 127.0.0.1:PORT
    return Container(runtime, name, int(mapped.rsplit(":", 1)[1]))


def wait_for(check, what: str, seconds: float = 90) -> object:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            result = check()
        except (OSError, ValueError):  # not listening yet, or an answer of the wrong shape
            result = None
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {seconds:g} s")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())


@pytest.mark.container
def test_the_image_takes_a_webhook_over_http_as_a_user_and_keeps_it_on_its_volume(image):
    runtime, tag = image
    volume = f"aircall-segment-test-{uuid.uuid4().hex[:8]}"
    containers: list[Container] = []
    try:
        first = run_container(runtime, tag, volume)
        containers.append(first)
        wait_for(lambda: get_json(first.url("/healthz"))["status"] == "ok", "/healthz answering ok")

        request = urllib.request.Request(
            first.url("/webhooks/aircall"),
            data=(FIXTURES / "call.ended.json").read_bytes(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert json.loads(answer.read()) == {"status": "accepted"}
        # Mapped into the outbox (no write key: kept there, not sent).
        wait_for(lambda: get_json(first.url("/healthz"))["outbox"]["pending"] >= 1, "the webhook's messages queued")

        # PID 1, the server, is not root, and the image's own health check passes.
        assert re.search(r"^Uid:\s+10001\s", first.exec("cat", "/proc/1/status"), re.M)
        if runtime == "podman":  # without systemd, podman runs health checks only when asked
            assert quietly("podman", "healthcheck", "run", first.name).returncode == 0
        wait_for(lambda: first.inspect("{{.State.Health.Status}}") == "healthy", "the health check healthy")

        # SIGTERM reaches the server, which stops cleanly (137 would be the runtime's SIGKILL after its wait).
        stop = quietly(runtime, "stop", "-t", "30", first.name, timeout=60)
        assert stop.returncode == 0, stop.stderr
        assert first.inspect("{{.State.ExitCode}}") == "0"

        # A new container on the same volume finds the outbox as it was.
        second = run_container(runtime, tag, volume)
        containers.append(second)
        wait_for(lambda: get_json(second.url("/healthz"))["status"] == "ok", "/healthz answering ok again")
        status = wait_for(lambda: json.loads(second.exec("engine", "outbox", "status", "--json")), "outbox status")
        assert status["pending"] >= 1, status
    finally:
        for container in containers:
            quietly(runtime, "rm", "-f", "-v", container.name, timeout=60)
        quietly(runtime, "volume", "rm", "-f", volume, timeout=60)
