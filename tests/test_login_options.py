"""The agents' broker login: secrets from 0600 files or the environment, never only from argv."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from iotfsm.commands.common import (
    PASSWORD_ENV,
    PSK_ENV,
    CommandError,
    add_login_arguments,
    login_options,
)

PSK = "vX6PQqazsGsMyf5SMfs6OA6y"


def parse(*argv: str, device: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tls-ca", type=Path)
    add_login_arguments(parser, device=device)
    return parser.parse_args(argv)


def secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    os.chmod(path, mode)
    return path


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PSK_ENV, raising=False)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)


def test_device_key_from_a_private_file(tmp_path: Path) -> None:
    path = secret_file(tmp_path / "dev.psk", PSK)
    options, psk = login_options(parse("--psk-file", str(path), device=True), device=True)
    assert psk == PSK and options.certfile is None


def test_a_secret_file_others_can_read_is_refused(tmp_path: Path) -> None:
    for mode in (0o644, 0o640, 0o604):
        path = secret_file(tmp_path / f"dev-{mode:o}.psk", PSK, mode)
        with pytest.raises(CommandError, match="chmod 600"):
            login_options(parse("--psk-file", str(path), device=True), device=True)


def test_device_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PSK_ENV, PSK)
    assert login_options(parse(device=True), device=True)[1] == PSK


def test_psk_in_argv_still_works_but_warns(capsys: pytest.CaptureFixture[str]) -> None:
    assert login_options(parse("--psk", PSK, device=True), device=True)[1] == PSK
    err = capsys.readouterr().err
    assert "WARNING --psk" in err and "ps" in err and PSK not in err


def test_certificate_device(tmp_path: Path) -> None:
    cert = tmp_path / "d.crt"
    cert.write_text("pem")
    key = secret_file(tmp_path / "d.key", "pem")
    options, psk = login_options(
        parse("--cert", str(cert), "--key", str(key), device=True), device=True
    )
    assert psk is None and (options.certfile, options.keyfile) == (cert, key)
    os.chmod(key, 0o644)
    with pytest.raises(CommandError, match=r"--key .* may be read by others"):
        login_options(parse("--cert", str(cert), "--key", str(key), device=True), device=True)
    with pytest.raises(CommandError, match="go together"):
        login_options(parse("--cert", str(cert), device=True), device=True)


def test_a_device_needs_exactly_one_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CommandError, match="no login"):
        login_options(parse(device=True), device=True)
    cert = tmp_path / "d.crt"
    cert.write_text("pem")
    key = secret_file(tmp_path / "d.key", "pem")
    monkeypatch.setenv(PSK_ENV, PSK)
    with pytest.raises(CommandError, match="not both"):
        login_options(parse("--cert", str(cert), "--key", str(key), device=True), device=True)


def test_platform_password_from_file_or_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = secret_file(tmp_path / "pw", "s3cret")
    options, _ = login_options(
        parse("--username", "iotfsm-platform", "--password-file", str(path), device=False),
        device=False,
    )
    assert (options.username, options.password) == ("iotfsm-platform", "s3cret")
    assert "s3cret" not in repr(options)
    with pytest.raises(CommandError, match="needs --password-file"):
        login_options(parse("--username", "u", device=False), device=False)
    with pytest.raises(CommandError, match="needs --username"):
        login_options(parse("--password-file", str(path), device=False), device=False)
    with pytest.raises(CommandError, match="empty"):
        login_options(
            parse("--username", "u", "--password-file", str(secret_file(path, "")), device=False),
            device=False,
        )
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    options, _ = login_options(parse("--username", "u", device=False), device=False)
    assert options.password == "from-env"
    with pytest.raises(CommandError, match="needs --username"):
        login_options(parse(device=False), device=False)  # a password in the env, no user
    monkeypatch.delenv(PASSWORD_ENV)
    options, _ = login_options(parse(device=False), device=False)
    assert options.username is None  # no login: an anonymous broker, as before
