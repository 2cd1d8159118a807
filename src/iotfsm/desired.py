"""The platform's desired state, as an operator writes it: a TOML file that `iotfsm platform`
reconciles every device toward, and reloads when it changes.

    [[devices]]              # the registry: only these devices get sessions and answers
    product = "P"
    devices = ["D1", "D2"]
    auth = "key"             # or "cert"; enabled = false turns them away, keeping the entry

    [[firmware]]
    product = "P"
    devices = ["D1", "D2"]   # or ["*"] for every device of the product
    version = "0.2"
    file = "fw-0.2.bin"      # relative to this file

    [[campaigns]]            # a staged rollout, started once; `state` pauses, resumes, cancels
    id = "spring-0.3"
    product = "P"
    version = "0.3"
    file = "fw-0.3.bin"
    wave_percents = [10, 30] # of every registered device; see campaign_spec for every field
    state = "running"

Every entry is checked before anything is applied, so a typo never half-applies a file; an error
names the entry and the field.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import attrs

from .adapters.topics import DEVICE_NAME, PRODUCT_ID
from .campaign_spec import CampaignSpec, CampaignSpecError
from .campaign_spec import parse as parse_campaign
from .machines.log_level import LEVELS
from .machines.names import name_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


SECTIONS = ("devices", "firmware", "config", "log_level", "resource", "campaigns")


class DesiredStateError(ValueError):
    """The desired-state file cannot be used; the message names the entry and what to fix."""


@attrs.frozen
class DevicesEntry:
    product: str
    devices: tuple[str, ...]
    auth: str
    enabled: bool


@attrs.frozen
class FirmwareEntry:
    product: str
    devices: tuple[str, ...]
    version: str
    file: Path


@attrs.frozen
class ConfigEntry:
    product: str
    enabled: bool
    payload: dict[str, Any] | None


@attrs.frozen
class LogLevelEntry:
    product: str
    devices: tuple[str, ...]
    level: int


@attrs.frozen
class ResourceEntry:
    product: str
    devices: tuple[str, ...]
    name: str
    file: Path


Entry = DevicesEntry | FirmwareEntry | ConfigEntry | LogLevelEntry | ResourceEntry


@attrs.frozen
class DesiredState:
    devices: tuple[DevicesEntry, ...] = ()
    firmware: tuple[FirmwareEntry, ...] = ()
    config: tuple[ConfigEntry, ...] = ()
    log_level: tuple[LogLevelEntry, ...] = ()
    resource: tuple[ResourceEntry, ...] = ()
    campaigns: tuple[CampaignSpec, ...] = ()


def fingerprint(entry: Entry) -> str:
    """Identifies an entry's content (file contents included), so reapplying is skipped."""
    doc = attrs.asdict(
        entry, value_serializer=lambda _, __, v: str(v) if isinstance(v, Path) else v
    )
    if isinstance(entry, (FirmwareEntry, ResourceEntry)):
        doc["file_md5"] = hashlib.md5(entry.file.read_bytes()).hexdigest()
    text = json.dumps({"kind": type(entry).__name__, **doc}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def load(path: Path) -> DesiredState:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DesiredStateError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DesiredStateError(f"{path}: cannot read it ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise DesiredStateError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(doc) - set(SECTIONS))
    if unknown:
        raise DesiredStateError(f"{path}: unknown section(s) {unknown}; use {', '.join(SECTIONS)}")
    base = path.parent
    return DesiredState(
        devices=tuple(
            _registered(e, f"{path}: devices[{i}]")
            for i, e in enumerate(_list(doc, "devices", path))
        ),
        firmware=tuple(
            _firmware(e, base, f"{path}: firmware[{i}]")
            for i, e in enumerate(_list(doc, "firmware", path))
        ),
        config=tuple(
            _config(e, f"{path}: config[{i}]") for i, e in enumerate(_list(doc, "config", path))
        ),
        log_level=tuple(
            _log_level(e, f"{path}: log_level[{i}]")
            for i, e in enumerate(_list(doc, "log_level", path))
        ),
        resource=tuple(
            _resource(e, base, f"{path}: resource[{i}]")
            for i, e in enumerate(_list(doc, "resource", path))
        ),
        campaigns=_campaigns(_list(doc, "campaigns", path), base, path),
    )


def _campaigns(entries: list[dict[str, Any]], base: Path, path: Path) -> tuple[CampaignSpec, ...]:
    found: dict[str, int] = {}
    specs = []
    for i, entry in enumerate(entries):
        where = f"{path}: campaigns[{i}]"
        try:
            spec = parse_campaign(entry, where, base)
        except CampaignSpecError as exc:
            raise DesiredStateError(str(exc)) from None
        if spec.id in found:
            raise DesiredStateError(
                f"{where}: 'id': {spec.id!r} is also campaigns[{found[spec.id]}]; ids are unique"
            )
        found[spec.id] = i
        specs.append(spec)
    return tuple(specs)


def _list(doc: dict[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise DesiredStateError(f"{path}: {key} must be an array of tables ([[{key}]])")
    return value


def _field(entry: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in entry:
        raise DesiredStateError(f"{where}: missing {key!r}")
    value = entry[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DesiredStateError(f"{where}: {key!r} must be a {kind.__name__}, got {value!r}")
    return value


def _known_keys(entry: dict[str, Any], keys: set[str], where: str) -> None:
    extra = sorted(set(entry) - keys)
    if extra:
        raise DesiredStateError(f"{where}: unknown key(s) {extra}; expected {sorted(keys)}")


def _product(entry: dict[str, Any], where: str) -> str:
    product: str = _field(entry, "product", str, where)
    if not PRODUCT_ID.fullmatch(product):
        raise DesiredStateError(f"{where}: product {product!r} must be 1-32 letters or digits")
    return product


def _devices(entry: dict[str, Any], where: str, allow_all: bool = True) -> tuple[str, ...]:
    devices = _field(entry, "devices", list, where)
    if not devices or not all(isinstance(d, str) for d in devices):
        raise DesiredStateError(f"{where}: 'devices' must be a non-empty list of device names")
    if devices == ["*"] and allow_all:
        return ("*",)
    for name in devices:
        if not DEVICE_NAME.fullmatch(name):
            raise DesiredStateError(
                f"{where}: device name {name!r} must be 1-48 letters, digits, ':', '_' or '-'"
                + (' (or ["*"] alone for every device)' if allow_all else "")
            )
    return tuple(devices)


def _file(entry: dict[str, Any], base: Path, where: str) -> Path:
    relative: str = _field(entry, "file", str, where)
    file = (base / relative).resolve()
    if not file.is_file():
        raise DesiredStateError(f"{where}: file {file} does not exist")
    return file


def _registered(entry: dict[str, Any], where: str) -> DevicesEntry:
    _known_keys(entry, {"product", "devices", "auth", "enabled"}, where)
    auth = entry.get("auth", "key")
    if auth not in ("key", "cert"):
        raise DesiredStateError(f'{where}: \'auth\' must be "key" or "cert", got {auth!r}')
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise DesiredStateError(f"{where}: 'enabled' must be true or false")
    devices = _devices(entry, where, allow_all=False)
    return DevicesEntry(_product(entry, where), devices, auth, enabled)


def _firmware(entry: dict[str, Any], base: Path, where: str) -> FirmwareEntry:
    _known_keys(entry, {"product", "devices", "version", "file"}, where)
    version: str = _field(entry, "version", str, where)
    if not 1 <= len(version) <= 32:
        raise DesiredStateError(f"{where}: version must be 1-32 characters")
    return FirmwareEntry(
        _product(entry, where), _devices(entry, where), version, _file(entry, base, where)
    )


def _config(entry: dict[str, Any], where: str) -> ConfigEntry:
    _known_keys(entry, {"product", "enabled", "payload"}, where)
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise DesiredStateError(f"{where}: 'enabled' must be true or false")
    payload = entry.get("payload")
    if payload is not None and not isinstance(payload, dict):
        raise DesiredStateError(
            f"{where}: 'payload' must be a table, e.g. payload = {{ baud = 9600 }}"
        )
    return ConfigEntry(_product(entry, where), enabled, payload)


def _log_level(entry: dict[str, Any], where: str) -> LogLevelEntry:
    _known_keys(entry, {"product", "devices", "level"}, where)
    level: int = _field(entry, "level", int, where)
    if level not in LEVELS:
        raise DesiredStateError(f"{where}: level {level} must be 0 (nothing) to 4 (debug)")
    return LogLevelEntry(_product(entry, where), _devices(entry, where), level)


def _resource(entry: dict[str, Any], base: Path, where: str) -> ResourceEntry:
    _known_keys(entry, {"product", "devices", "name", "file"}, where)
    name: str = _field(entry, "name", str, where)
    problem = name_problem(name)
    if problem is not None:
        raise DesiredStateError(f"{where}: resource name {name!r} refused: {problem}")
    devices = _devices(entry, where, allow_all=False)
    return ResourceEntry(_product(entry, where), devices, name, _file(entry, base, where))
