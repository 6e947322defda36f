"""Typed settings of the worker, read from ``HCLAL_*`` variables and an optional TOML file.

Every process (SCP, Celery worker, CLI) calls :func:`load_settings` once at start.
Invalid values raise :class:`SettingsError` with one message that names the
setting, the value and the fix.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceParsingError

ENV_PREFIX = "HCLAL_"


class SettingsError(ValueError):
    """A setting has an invalid value; the message names the setting and the fix."""


class Destination(BaseModel):
    """A DICOM storage SCP that receives the worker's reports."""

    ae_title: str = Field(min_length=1, max_length=16)
    host: str
    port: int = Field(ge=1, le=65535)

    @field_validator("ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        return check_ae_title(value)


def check_ae_title(value: str) -> str:
    """Return ``value`` stripped, or raise ``ValueError`` if it is not a valid AE title (PS3.5 AE VR)."""
    stripped = value.strip()
    if not stripped or len(stripped) > 16:
        raise ValueError(f"AE title {value!r} must have 1 to 16 characters")
    if "\\" in stripped or any(ord(c) < 32 or ord(c) > 126 for c in stripped):
        raise ValueError(f"AE title {value!r} must be printable ASCII without backslash")
    return stripped


def default_data_dir() -> Path:
    """Return the per-user data folder (``$XDG_DATA_HOME/hclal`` or ``~/.local/share/hclal``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "hclal"


class Settings(BaseSettings):
    """Settings of every worker process; each field is the variable ``HCLAL_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Folder for the spool, reports, previews and the SQLite database.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; empty means a SQLite file 'hclal.sqlite3' in the data folder.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker URL (redis://...); empty runs analysis tasks in-process.",
    )
    result_backend: str | None = Field(
        default=None, description="Celery result backend URL; empty means none."
    )
    broker_visibility_timeout: float = Field(
        default=1800.0,
        gt=0,
        description="Seconds before a task taken by a worker that died is given to another worker; "
        "keep it above the task time limit.",
    )
    task_time_limit: float = Field(
        default=900.0, gt=0, description="Seconds after which an analysis task is killed."
    )

    ae_title: str = Field(default="HCLAL", description="AE title of the worker's SCP and SCU.")
    scp_host: str = Field(default="127.0.0.1", description="Address the SCP listens on.")
    scp_port: int = Field(default=11112, ge=1, le=65535, description="TCP port of the SCP.")
    allowed_calling_ae_titles: list[str] = Field(
        default_factory=list,
        description="Calling AE titles accepted by the SCP (JSON list); empty accepts any.",
    )
    allowed_source_addresses: list[str] = Field(
        default_factory=list,
        description="Peer IP addresses accepted by the SCP (JSON list); empty accepts any.",
    )
    tls_certificate: Path | None = Field(default=None, description="PEM certificate for DICOM TLS.")
    tls_key: Path | None = Field(default=None, description="PEM private key for DICOM TLS.")
    tls_ca: Path | None = Field(
        default=None, description="PEM CA bundle; when set, peers must present a certificate it signed."
    )
    max_pdu_size: int = Field(default=0, ge=0, description="Maximum PDU size in bytes; 0 is unlimited.")
    network_timeout: float = Field(default=60.0, gt=0, description="DIMSE/network timeout in seconds.")

    quiet_period: float = Field(
        default=30.0,
        gt=0,
        description="Seconds after a study's last instance before analysing a study whose SEG "
        "references cannot be resolved.",
    )

    coarse_model: Path | None = Field(
        default=None, description="Coarse model checkpoint folder; empty uses the shipped demo model."
    )
    fine_model: Path | None = Field(
        default=None, description="Fine model checkpoint folder; empty uses the shipped demo model."
    )
    device: str = Field(default="auto", description="Torch device: auto, cpu, cuda or cuda:N.")
    coarse_top_k: int = Field(default=3, ge=1, le=50, description="Coarse sites whose children are ranked.")
    uncertain_below: float = Field(
        default=0.5, ge=0, le=1, description="Top probability below which a finding is marked uncertain."
    )

    destinations: list[Destination] = Field(
        default_factory=list,
        description='Report destinations, JSON list of {"ae_title", "host", "port"} objects.',
    )
    sr_fallback_sop_class: str = Field(
        default="enhanced",
        description="SR SOP class used when a destination rejects Comprehensive 3D SR: enhanced or comprehensive.",
    )
    delivery_max_attempts: int = Field(default=5, ge=1, le=100, description="Send attempts per destination.")
    delivery_backoff: float = Field(
        default=2.0, gt=0, description="First retry delay in seconds; doubled after each attempt."
    )
    confirm_delivery: bool = Field(
        default=False, description="After sending, check the report by C-FIND at IMAGE level."
    )

    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="Port of the Prometheus endpoint; empty disables it."
    )
    log_level: str = Field(default="INFO", description="Logging level: DEBUG, INFO, WARNING or ERROR.")

    @field_validator("ae_title")
    @classmethod
    def _check_own_ae_title(cls, value: str) -> str:
        return check_ae_title(value)

    @field_validator("allowed_calling_ae_titles")
    @classmethod
    def _check_allowed_titles(cls, values: list[str]) -> list[str]:
        return [check_ae_title(v) for v in values]

    @field_validator("allowed_source_addresses")
    @classmethod
    def _check_source_addresses(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not an IP address or network such as 10.0.0.5 or 10.0.0.0/24"
                ) from None
        return values

    @model_validator(mode="after")
    def _check_tls_pair(self) -> Settings:
        if (self.tls_certificate is None) != (self.tls_key is None):
            present, missing = ("CERTIFICATE", "KEY")
            if self.tls_key is not None:
                present, missing = missing, present
            raise ValueError(
                f"{ENV_PREFIX}TLS_{present} is set but {ENV_PREFIX}TLS_{missing} is not; "
                "DICOM TLS needs both PEM files, so set both or neither"
            )
        return self

    @field_validator("sr_fallback_sop_class")
    @classmethod
    def _check_fallback(cls, value: str) -> str:
        if value not in ("enhanced", "comprehensive"):
            raise ValueError("must be 'enhanced' or 'comprehensive'")
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        lowered = value.strip().lower()
        if lowered in ("auto", "cpu", "cuda") or (lowered.startswith("cuda:") and lowered[5:].isdigit()):
            return lowered
        raise ValueError("must be auto, cpu, cuda or cuda:N (N the GPU index)")

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return upper

    @property
    def spool_dir(self) -> Path:
        """Folder of received instances, laid out by Study/Series/SOP Instance UID."""
        return self.data_dir / "spool"

    @property
    def reports_dir(self) -> Path:
        """Folder of the Structured Reports the worker writes."""
        return self.data_dir / "reports"

    @property
    def effective_database_url(self) -> str:
        """The configured database URL, or the SQLite file in the data folder."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'hclal.sqlite3'}"

    @property
    def is_embedded_database(self) -> bool:
        """Whether the database is SQLite (created and migrated automatically)."""
        return self.effective_database_url.startswith("sqlite")


def _format_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        if not item["loc"]:
            # A model validator's error: its message names the settings involved, and the
            # input is every setting, which can include a database password.
            lines.append(f"invalid settings: {item['msg']}")
            continue
        location = ".".join(str(part) for part in item["loc"])
        name = ENV_PREFIX + str(item["loc"][0]).upper()
        value = item.get("input")
        if isinstance(value, dict | list):
            shown = repr(value)[:200]
        else:
            shown = repr(value)
        lines.append(
            f"invalid setting {name} ({location}) = {shown}: {item['msg']}; "
            f"fix the environment variable {name} or the key {item['loc'][0]!s} in the config file"
        )
    return "\n".join(lines)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise SettingsError(f"config file {path} not found; pass an existing TOML file to --config") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from exc
    section = raw.get("hclal", raw)
    return {str(key).lower(): value for key, value in section.items()}


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from a TOML file, the environment and explicit overrides.

    The environment wins over the file and explicit overrides win over both. A TOML
    file holds the same names as the variables without the prefix, at the top level
    or under a ``[hclal]`` table.

    Raises
    ------
    SettingsError
        If a value is invalid or the file cannot be read.
    """
    file_values: dict[str, Any] = _read_toml(config_file) if config_file else {}
    env_names = {key[len(ENV_PREFIX):].lower() for key in os.environ if key.startswith(ENV_PREFIX)}
    init_values = {k: v for k, v in file_values.items() if k not in env_names}
    init_values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**init_values)
    except ValidationError as exc:
        raise SettingsError(_format_error(exc)) from None
    except SourceParsingError as exc:
        raise SettingsError(_format_parsing_error(exc)) from None


def _format_parsing_error(error: SourceParsingError) -> str:
    """Return the message for a variable that pydantic-settings cannot parse as JSON.

    pydantic-settings parses list and object settings from the environment as JSON
    before validation, and its error names only the field.
    """
    # pydantic-settings 2.x words it 'error parsing value for field "<name>" from source ...'.
    match = re.search(r'field "(\w+)"', str(error))
    field = Settings.model_fields.get(match.group(1)) if match else None
    if match is None or field is None:
        return f"invalid setting: {error}; fix the environment variable that it names"

    name = ENV_PREFIX + match.group(1).upper()
    value = next((value for key, value in os.environ.items() if key.upper() == name), "")
    reason = f" ({error.__cause__})" if error.__cause__ is not None else ""
    if field.annotation == list[str]:
        entries = [entry.strip() for entry in value.strip("[] ").split(",") if entry.strip()]
        fix = f"write it as a JSON list of strings, for example {json.dumps(entries)!r}"
    else:
        fix = f"write it as JSON: {field.description}"
    return f"invalid setting {name} = {value[:200]!r}: not valid JSON{reason}; {fix}"
