"""The one HOST:PORT parser behind --http, --broker-auth, --mqtt and --amqp: what it accepts, and a
message naming the flag and the fault for everything else."""

from __future__ import annotations

import pytest

from iotfsm.commands.common import CommandError, parse_address


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("localhost:0", ("localhost", 0)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
        ("[::1]:1883", ("::1", 1883)),
        ("[fe80::1%eth0]:80", ("fe80::1%eth0", 80)),
    ],
)
def test_an_address_parses_to_host_and_port(value: str, expected: tuple[str, int]) -> None:
    assert parse_address("--http", value) == expected


@pytest.mark.parametrize(
    ("value", "fault"),
    [
        ("nope", "no port"),
        ("127.0.0.1", "no port"),
        (":8080", "no host"),
        ("127.0.0.1:", "the port '' is not a number"),
        ("127.0.0.1:http", "the port 'http' is not a number"),
        ("127.0.0.1:-1", "the port '-1' is not a number"),
        ("127.0.0.1:٨٠", "is not a number"),  # Arabic-Indic digits pass str.isdigit()
        ("127.0.0.1:65536", "the port 65536 is out of range (0-65535)"),
        ("::1:8080", "put an IPv6 address in brackets"),
        ("[::1]", "no port after the address"),
        ("[::1]8080", "no port after the address"),
        ("[::1:8080", "an IPv6 address goes in brackets"),
        ("[]:8080", "an IPv6 address goes in brackets"),
    ],
)
def test_a_bad_address_names_the_flag_and_the_fault(value: str, fault: str) -> None:
    with pytest.raises(CommandError) as caught:
        parse_address("--broker-auth", value, "127.0.0.1:8089")
    message = str(caught.value)
    assert message.startswith(f"--broker-auth {value!r} must be HOST:PORT, e.g. 127.0.0.1:8089")
    assert fault in message
