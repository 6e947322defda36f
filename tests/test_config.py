"""Settings: defaults, environment and TOML precedence, and one clear message per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from worker.cli import app
from worker.config import SettingsError, load_settings


def test_defaults_are_embedded(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.broker_url is None
    assert settings.scp_host == "127.0.0.1"
    assert settings.scp_port == 11112
    assert settings.effective_database_url == f"sqlite:///{settings.data_dir / 'hclal.sqlite3'}"
    assert settings.data_dir == tmp_path / "xdg-data" / "hclal"


def test_destinations_parsed_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCLAL_DESTINATIONS", '[{"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}]')
    settings = load_settings()
    assert [(d.ae_title, d.host, d.port) for d in settings.destinations] == [("PACS", "127.0.0.1", 4242)]


def test_environment_overrides_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "hclal.toml"
    config.write_text('ae_title = "FROMFILE"\nscp_port = 2000\n')
    monkeypatch.setenv("HCLAL_SCP_PORT", "3000")
    settings = load_settings(config)
    assert settings.ae_title == "FROMFILE"
    assert settings.scp_port == 3000


def test_toml_hclal_table_read(tmp_path: Path) -> None:
    config = tmp_path / "hclal.toml"
    config.write_text('[hclal]\nquiet_period = 5.5\n')
    assert load_settings(config).quiet_period == 5.5


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("HCLAL_SCP_PORT", "70000", "HCLAL_SCP_PORT"),
        ("HCLAL_AE_TITLE", "THIS_TITLE_IS_TOO_LONG", "HCLAL_AE_TITLE"),
        ("HCLAL_DESTINATIONS", '[{"ae_title": "PACS", "host": "127.0.0.1"}]', "HCLAL_DESTINATIONS"),
        ("HCLAL_LOG_LEVEL", "LOUD", "HCLAL_LOG_LEVEL"),
    ],
    ids=["port-range", "ae-title-length", "destination-missing-port", "log-level"],
)
def test_invalid_setting_named_with_value_and_fix(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert fragment in message
    assert "fix the environment variable" in message


def test_invalid_setting_fails_cli_with_one_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCLAL_SCP_PORT", "not-a-port")
    result = CliRunner().invoke(app, ["db", "current"])
    assert result.exit_code == 1
    assert "HCLAL_SCP_PORT" in result.output
    assert "'not-a-port'" in result.output


def test_non_json_list_named_with_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCLAL_ALLOWED_CALLING_AE_TITLES", "PACS, MODALITY")
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert "HCLAL_ALLOWED_CALLING_AE_TITLES = 'PACS, MODALITY'" in message
    assert "not valid JSON" in message
    assert """'["PACS", "MODALITY"]'""" in message


def test_non_json_destinations_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCLAL_DESTINATIONS", "PACS@127.0.0.1:4242")
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert "HCLAL_DESTINATIONS = 'PACS@127.0.0.1:4242'" in message
    assert "not valid JSON" in message


def test_tls_key_without_certificate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCLAL_TLS_KEY", "/etc/hclal/worker.key")
    with pytest.raises(SettingsError) as error:
        load_settings()
    message = str(error.value)
    assert "HCLAL_TLS_KEY is set but HCLAL_TLS_CERTIFICATE is not" in message
    assert "\n" not in message


def test_source_network_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCLAL_ALLOWED_SOURCE_ADDRESSES", '["10.0.0.5", "10.1.0.1/16", "::1"]')
    assert load_settings().allowed_source_addresses == ["10.0.0.5", "10.1.0.1/16", "::1"]


def test_missing_config_file_reported(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "absent.toml")


def test_db_commands_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCLAL_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()
    assert "behind head" in runner.invoke(app, ["db", "current"]).output
    upgraded = runner.invoke(app, ["db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    assert "at head" in runner.invoke(app, ["db", "current"]).output
    downgraded = runner.invoke(app, ["db", "downgrade", "base"])
    assert "database at base" in downgraded.output


def test_readme_lists_every_setting() -> None:
    from worker.config import Settings

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`HCLAL_{name.upper()}`" not in readme]
    assert missing == []
