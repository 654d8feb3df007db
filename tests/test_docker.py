"""The Docker files, checked without Docker: the compose file parses and wires the service, its
volume, port and key; the Dockerfile has what the service needs (no image is built here)."""

from __future__ import annotations

import re

import pytest

from tests.support import ROOT

DOCKER = ROOT / "docker"


def test_compose_file_wires_the_service() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    service = compose["services"]["convplan"]
    assert service["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert (DOCKER / ".." / service["build"]["dockerfile"]).resolve() == \
        (DOCKER / "Dockerfile").resolve()
    assert service["ports"] == ["8000:8000"]
    [volume] = service["volumes"]
    name, target = volume.split(":")
    assert target == "/data" and name in compose["volumes"]
    assert service["environment"]["CONVPLAN_DB"] == "/data/costs.sqlite"
    assert re.fullmatch(r"\$\{CONVPLAN_API_KEY(:?\?.*)?\}",
                        service["environment"]["CONVPLAN_API_KEY"])


def test_dockerfile_runs_the_service_as_a_user_with_a_volume_and_healthcheck() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    instructions = [line.split(None, 1)[0] for line in text.splitlines()
                    if line and not line.startswith((" ", "#"))]
    assert instructions[0] == "FROM" and "FROM python:3.11-slim" in text
    assert "CONVPLAN_DB=/data/costs.sqlite" in text and 'VOLUME ["/data"]' in text
    user = re.search(r"^USER (\S+)", text, re.M)
    assert user is not None and user.group(1) not in ("root", "0")
    assert instructions.index("USER") < instructions.index("CMD")
    assert "HEALTHCHECK" in instructions and "/healthz" in text
    assert text.rstrip().endswith(
        'CMD ["convplan", "serve", "--host", "0.0.0.0", "--port", "8000"]')
    for package in ("convplan", "kernels", "selector", "profiles", "api"):
        assert f"COPY {package} ./{package}" in text
