"""Raw MQTT logins for the secure-broker tests: the answer a broker gives to one CONNECT.

A transport retries forever, which is right for an agent and useless for asserting a refusal;
these helpers make one connection, send one CONNECT and report the CONNACK code, or None when the
broker ended the connection first (a TLS handshake it refused). No waiting on a negative: the
broker's answer, or its closing the socket, ends the call.
"""

from __future__ import annotations

import socket
import ssl
import struct
from pathlib import Path


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack("!H", len(data)) + data


def _remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def connect_packet(client_id: str, username: str | None, password: str | None) -> bytes:
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", 30) + _string(client_id)
    if username is not None:
        body += _string(username)
    if password is not None:
        body += _string(password)
    return b"\x10" + _remaining_length(len(body)) + body


def connack_code(
    port: int,
    ca_file: Path,
    *,
    client_id: str = "probe",
    cert: tuple[Path, Path] | None = None,
    username: str | None = None,
    password: str | None = None,
    host: str = "127.0.0.1",
) -> int | None:
    """The CONNACK return code for one MQTT 3.1.1 login over TLS, or None if refused before."""
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    with socket.create_connection((host, port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(connect_packet(client_id, username, password))
                answer = b""
                while len(answer) < 4:
                    chunk = tls.recv(4 - len(answer))
                    if not chunk:
                        return None
                    answer += chunk
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return None
    assert answer[0] == 0x20, f"not a CONNACK: {answer!r}"
    return answer[3]
