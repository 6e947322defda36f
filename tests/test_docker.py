"""The compose file and Dockerfile refer only to real commands and files of this repository.

No Docker engine runs in CI, so the files are parsed and checked instead of built.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from worker.cli import app

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
REQUIRED_SERVICES = {"postgres", "redis", "orthanc", "scp", "worker", "flower"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def hclal_services(compose: dict) -> dict[str, dict]:
    """Return the services that run the hclal image."""
    return {
        name: service for name, service in compose["services"].items()
        if str(service.get("image", "")).startswith("hclal:")
    }


def test_compose_has_every_service(compose: dict) -> None:
    assert REQUIRED_SERVICES <= set(compose["services"])


def test_worker_reserves_a_gpu(compose: dict) -> None:
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


@pytest.mark.parametrize("service", ["migrate", "scp", "worker"])
def test_service_command_is_real_subcommand(compose: dict, service: str) -> None:
    command = hclal_services(compose)[service]["command"]
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    for option in (part for part in command if part.startswith("--")):
        assert option in result.output


def test_build_targets_exist(compose: dict) -> None:
    targets = set(re.findall(r"^FROM \S+ AS (\w+)", DOCKERFILE.read_text(), flags=re.M))
    for service in hclal_services(compose).values():
        build = service["build"]
        assert (ROOT / "docker" / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert build["target"] in targets


def test_dockerfile_copies_existing_paths() -> None:
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY "):
            sources.extend(shlex.split(line)[1:-1])
    assert sources
    missing = [source for source in sources if not (ROOT / source).exists()]
    assert missing == []


def test_env_example_settings_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.config import load_settings

    for line in (ROOT / "docker" / "hclal.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, value = line.split("=", 1)
            monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.destinations[0].host == "orthanc"
    assert settings.allowed_calling_ae_titles == ["ORTHANC"]
