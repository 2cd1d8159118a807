"""The device registry: who may speak for a device, with which key, and what the platform does with
everyone else (no session, no answer, no URL; one log line per name, rate limited)."""

from __future__ import annotations

import json
import logging
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iotfsm import MemoryBroker, Platform
from iotfsm.adapters.identity.credentials import DeviceCredentials
from iotfsm.adapters.identity.registry import (
    ProductSecrets,
    Registry,
    RegistryError,
    derive_psk,
    device_topics,
)
from iotfsm.adapters.store.session_store import MemoryStore, SqliteStore
from iotfsm.desired import DesiredStateError
from iotfsm.fsm.clock import ManualClock
from iotfsm.machines import DeviceKey
from iotfsm.reconcile import Reconciler
from iotfsm.testing import wait_for
from iotfsm.testing.server import free_port

PRODUCT = "REG0000001"
NOW = 1_800_000_000.0


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(MemoryStore(), ProductSecrets(tmp_path / "secrets"), clock=ManualClock(NOW))


def login(registry: Registry, device: str, expiry: int = 2_000_000_000) -> tuple[str, str]:
    creds = registry.credentials(PRODUCT, device)
    made = creds.login(expiry=expiry)
    return made.username, made.password


def test_add_list_disable_enable_remove(registry: Registry) -> None:
    entry = registry.add(PRODUCT, "d1")
    registry.add(PRODUCT, "d2", auth="cert")
    assert (entry.enabled, entry.auth, entry.generation) == (True, "key", 1)
    assert [(d.device, d.auth) for d in registry.devices()] == [("d1", "key"), ("d2", "cert")]
    assert registry.admits(DeviceKey(PRODUCT, "d1"))
    registry.disable(PRODUCT, "d1")
    assert not registry.admits(DeviceKey(PRODUCT, "d1"))
    registry.enable(PRODUCT, "d1")
    assert registry.admits(DeviceKey(PRODUCT, "d1"))
    registry.remove(PRODUCT, "d1")
    assert registry.get(PRODUCT, "d1") is None
    assert not registry.admits(DeviceKey(PRODUCT, "d1"))
    assert not registry.admits(DeviceKey(PRODUCT, "never"))


@pytest.mark.parametrize(
    ("product", "device", "match"),
    [
        ("REG0000001", "../etc", "device name"),
        ("REG-1", "d1", "product id"),
        ("REG0000001", "x" * 49, "device name"),
        ("REG0000001", "", "device name"),
    ],
)
def test_hostile_names_are_refused_and_change_nothing(
    registry: Registry, product: str, device: str, match: str
) -> None:
    with pytest.raises(RegistryError, match=match):
        registry.add(product, device)
    assert registry.devices() == []


def test_bad_operations_say_what_to_do(registry: Registry) -> None:
    registry.add(PRODUCT, "d1")
    with pytest.raises(RegistryError, match="registered already"):
        registry.add(PRODUCT, "d1")
    with pytest.raises(RegistryError, match="not registered"):
        registry.disable(PRODUCT, "ghost")
    with pytest.raises(RegistryError, match="auth"):
        registry.add(PRODUCT, "d3", auth="password")  # type: ignore[arg-type]
    registry.add(PRODUCT, "c1", auth="cert")
    with pytest.raises(RegistryError, match="certificate"):
        registry.device_psk(PRODUCT, "c1")


def test_keys_derive_from_the_product_secret_and_change_when_a_device_is_added_again(
    registry: Registry, tmp_path: Path
) -> None:
    registry.add(PRODUCT, "d1")
    first = registry.device_psk(PRODUCT, "d1")
    DeviceCredentials(PRODUCT, "d1", first)  # a valid Tencent device key (base64, 16 bytes)
    secret = registry.secrets.get(PRODUCT)
    assert first == derive_psk(secret, PRODUCT, "d1", 1)
    assert first != registry.device_psk(PRODUCT, "d1").swapcase()
    registry.remove(PRODUCT, "d1")
    assert registry.add(PRODUCT, "d1").generation == 2
    assert registry.device_psk(PRODUCT, "d1") != first  # the old key is dead for good


def test_secrets_are_kept_outside_the_store_readable_by_the_owner_only(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "platform.sqlite3")
    registry = Registry(store, ProductSecrets(tmp_path / "secrets"))
    registry.add(PRODUCT, "d1")
    imported = "QUFBQUFBQUFBQUFBQUFBQQ=="
    registry.add(PRODUCT, "d2", psk=imported)
    psk = registry.device_psk(PRODUCT, "d1")
    store.close()
    raw = (tmp_path / "platform.sqlite3").read_bytes()
    for part in (tmp_path / "platform.sqlite3").parent.glob("platform.sqlite3*"):
        raw += part.read_bytes()
        assert stat.S_IMODE(part.stat().st_mode) & 0o077 == 0, part
    assert psk.encode() not in raw and imported.encode() not in raw
    secret_file = tmp_path / "secrets" / f"{PRODUCT}.key"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    secret_file.chmod(0o644)
    again = Registry(
        SqliteStore(tmp_path / "platform.sqlite3"), ProductSecrets(tmp_path / "secrets")
    )
    with pytest.raises(RegistryError, match="readable by others"):
        again.device_psk(PRODUCT, "d1")


def test_check_login_accepts_exactly_the_devices_own_unexpired_credentials(
    registry: Registry,
) -> None:
    registry.add(PRODUCT, "d1")
    registry.add(PRODUCT, "d2")
    username, password = login(registry, "d1")
    key = DeviceKey(PRODUCT, "d1")
    assert registry.check_login(username, password) == key
    assert registry.check_login(username, password, client_id=f"{PRODUCT}d1") == key
    sha1 = registry.credentials(PRODUCT, "d1").password(username, "hmacsha1")
    assert registry.check_login(username, sha1) == key
    # another device's signature, a client id that is not the username's, a tampered username
    other_user, other_pass = login(registry, "d2")
    assert registry.check_login(username, other_pass) is None
    assert registry.check_login(username, password, client_id=f"{PRODUCT}d2") is None
    assert registry.check_login(username.replace("d1;", "d2;"), password) is None
    # an expiry in the past
    expired_user, expired_pass = login(registry, "d1", expiry=int(NOW) - 1)
    assert registry.check_login(expired_user, expired_pass) is None
    # disabled, then enabled again, then removed
    registry.disable(PRODUCT, "d1")
    assert registry.check_login(username, password) is None
    registry.enable(PRODUCT, "d1")
    assert registry.check_login(username, password) == key
    registry.remove(PRODUCT, "d1")
    assert registry.check_login(username, password) is None
    assert registry.check_login(other_user, other_pass) == DeviceKey(PRODUCT, "d2")


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("", ""),
        ("garbage", "x"),
        ("REG0000001d1;;;", "x;hmacsha256"),
        ("REG0000001d1;12010126;BzaMF;" + "9" * 5000, "x;hmacsha256"),
        ("\x00" * 100, "\xff" * 100),
        ("REG0000001d1;12010126;BzaMF;2000000000", "0" * 64 + ";hmacsha256"),
        ("REG0000001d1;12010126;BzaMF;2000000000", "nosuffix"),
    ],
)
def test_check_login_never_raises_on_hostile_input(
    registry: Registry, username: str, password: str
) -> None:
    registry.add(PRODUCT, "d1")
    assert registry.check_login(username, password) is None


def test_a_certificate_device_cannot_log_in_with_a_key(registry: Registry) -> None:
    registry.add(PRODUCT, "c1", auth="cert")
    creds = DeviceCredentials(
        PRODUCT, "c1", derive_psk(registry.secrets.ensure(PRODUCT), PRODUCT, "c1", 1)
    )
    made = creds.login()
    assert registry.check_login(made.username, made.password) is None


def test_device_topics_come_from_the_declarations() -> None:
    publish, subscribe = device_topics(DeviceKey(PRODUCT, "d1"))
    assert f"$ota/report/{PRODUCT}/d1" in publish
    assert f"$ota/update/{PRODUCT}/d1" in subscribe
    assert f"$config/operation/{PRODUCT}/d1" in publish
    assert f"$config/operation/result/{PRODUCT}/d1" in subscribe
    assert f"$resource/up/service/{PRODUCT}/d1" in publish
    assert f"$log/operation/result/{PRODUCT}/d1" in subscribe
    assert not set(publish) & set(subscribe)
    # RRPC's topics end with the processId: any one, `+`
    assert f"$rrpc/txd/{PRODUCT}/d1/+" in publish
    assert f"$rrpc/rxd/{PRODUCT}/d1/+" in subscribe
    assert all(t.removesuffix("/+").endswith(f"/{PRODUCT}/d1") for t in publish + subscribe)


def _ask(broker: MemoryBroker, device: str) -> None:
    """Any client of the broker asks for a device's log level (the broker checks no identity)."""
    client = broker.connect(f"forger-{device}")
    client.set_handlers(lambda topic, payload: None, lambda up: None)
    client.start()
    client.publish(
        f"$log/operation/{PRODUCT}/{device}",
        json.dumps({"type": "get_log_level", "clientToken": "t-1"}).encode(),
        0,
    )
    client.stop()


def listen(broker: MemoryBroker) -> list[str]:
    """The topics of every answer the platform sends to any device."""
    heard: list[str] = []
    client = broker.connect("listener")
    client.set_handlers(lambda topic, payload: heard.append(topic), lambda up: None)
    client.subscribe(f"$log/operation/result/{PRODUCT}/+", 0)
    client.start()
    return heard


def test_the_platform_answers_registered_devices_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock(NOW)
    broker = MemoryBroker()
    heard = listen(broker)
    with Platform(broker, clock=clock, data_dir=tmp_path / "platform") as platform:
        platform.register_device(PRODUCT, "real")
        with caplog.at_level(logging.WARNING, logger="iotfsm.adapters.identity.registry"):
            for _ in range(3):
                _ask(broker, "ghost")
            _ask(broker, "real")
        assert heard == [f"$log/operation/result/{PRODUCT}/real"]
        assert {s.device for s in platform.status()} == {"real"}
        assert platform.runtime.refused == 3
        refusals = [r for r in caplog.records if "ghost" in r.getMessage()]
        assert len(refusals) == 1  # once per name
        with pytest.raises(RegistryError, match="not registered"):
            platform.deploy_firmware(PRODUCT, ["ghost"], "2.0", b"image")
        with pytest.raises(RegistryError, match="not registered"):
            platform.set_log_level(PRODUCT, "ghost", 3)
        assert platform.files.published("fw-" + "0" * 32) is None


def test_refusal_log_lines_are_rate_limited(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="iotfsm.adapters.identity.registry"):
        for n in range(1000):
            registry.gate(DeviceKey(PRODUCT, f"ghost{n}"))
    assert len(caplog.records) <= registry.refusals.burst
    assert registry.refusals.refused == 1000


def test_removing_a_device_drops_its_sessions_and_a_restart_does_not_bring_them_back(
    tmp_path: Path,
) -> None:
    clock = ManualClock(NOW)
    broker = MemoryBroker(scheduler=clock)
    data = tmp_path / "platform"
    with Platform(broker, clock=clock, data_dir=data) as platform:
        for name in ("keep", "drop"):
            platform.register_device(PRODUCT, name)
            _ask(broker, name)
        assert {s.device for s in platform.status()} == {"keep", "drop"}
        platform.registry.remove(PRODUCT, "drop")
        assert {s.device for s in platform.status()} == {"keep"}
    with Platform(broker, clock=clock, data_dir=data) as platform:
        assert {s.device for s in platform.status()} == {"keep"}


def test_sessions_of_names_not_in_the_registry_are_dropped_at_start(tmp_path: Path) -> None:
    """A store filled by an open platform (or by the old default) does not come back whole."""
    clock = ManualClock(NOW)
    broker = MemoryBroker(scheduler=clock)
    data = tmp_path / "platform"
    with Platform(broker, clock=clock, data_dir=data, open_registry=True) as platform:
        for n in range(20):
            _ask(broker, f"invented{n}")
        assert len(platform.status()) == 20
    with Platform(broker, clock=clock, data_dir=data) as platform:
        assert platform.status() == []
    store = SqliteStore(data / "platform.sqlite3")
    assert list(store.load()) == []
    store.close()


def iotfsm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iotfsm", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_registry_command_changes_what_a_running_platform_admits(tmp_path: Path) -> None:
    data = tmp_path / "platform"
    broker = MemoryBroker()
    heard = listen(broker)
    with Platform(broker, data_dir=data) as platform:
        key_file = tmp_path / "dev-1.psk"
        done = iotfsm(
            "registry", "add", "--data-dir", str(data), "--product-id", PRODUCT,
            "--device-name", "dev-1", "--key-out", str(key_file),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        psk = key_file.read_text().strip()
        assert psk not in done.stdout + done.stderr  # the key goes to the file only
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert platform.registry.device_psk(PRODUCT, "dev-1") == psk
        wait_for(
            "the platform to see the new device",
            lambda: platform.registry.admits(DeviceKey(PRODUCT, "dev-1")),
            5,
        )

        def turn(command: str, admitted: bool, answers: int) -> None:
            args = ("--data-dir", str(data), "--product-id", PRODUCT, "--device-name", "dev-1")
            assert iotfsm("registry", command, *args).returncode == 0
            key = DeviceKey(PRODUCT, "dev-1")
            wait_for(
                f"the platform to see {command}",
                lambda: platform.registry.admits(key) == admitted,
                5,
            )
            _ask(broker, "dev-1")
            assert len(heard) == answers

        _ask(broker, "dev-1")
        assert len(heard) == 1
        turn("disable", admitted=False, answers=1)  # turned away: no answer
        turn("enable", admitted=True, answers=2)  # back in, nothing restarted
        listed = iotfsm("registry", "list", "--data-dir", str(data), "--json")
        assert json.loads(listed.stdout) == [
            {"product": PRODUCT, "device": "dev-1", "enabled": True, "auth": "key"}
        ]
        assert psk not in listed.stdout
    bad = iotfsm(
        "registry", "add", "--data-dir", str(data), "--product-id", PRODUCT, "--device-name", "../x"
    )
    assert bad.returncode == 1 and "device name" in bad.stderr and "Traceback" not in bad.stderr
    gone = iotfsm(
        "registry",
        "remove",
        "--data-dir",
        str(data),
        "--product-id",
        PRODUCT,
        "--device-name",
        "nobody",
    )
    assert gone.returncode == 1 and "not registered" in gone.stderr


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def test_300k_invented_names_grow_nothing_and_real_devices_are_answered_throughout(
    tmp_path: Path,
) -> None:
    """Against a registry of 100 devices, 300k invented names are refused before any session
    or decode; RSS stays within 10 % of idle and every real device's ask is answered at once."""
    broker = MemoryBroker()
    platform = Platform(broker, data_dir=tmp_path / "platform").start()
    try:
        real = [f"real{n:03d}" for n in range(100)]
        for name in real:
            platform.register_device(PRODUCT, name)
        answered: list[float] = []
        listener = broker.connect("listener")
        listener.set_handlers(
            lambda topic, payload: answered.append(time.monotonic()), lambda up: None
        )
        listener.subscribe(f"$log/operation/result/{PRODUCT}/+", 0)
        listener.start()
        forger = broker.connect("forger")
        forger.set_handlers(lambda topic, payload: None, lambda up: None)
        forger.start()
        payload = json.dumps({"type": "get_log_level", "clientToken": "t-1"}).encode()
        for name in real:  # warm: every real device has its sessions
            forger.publish(f"$log/operation/{PRODUCT}/{name}", payload, 0)
        idle = _rss_kib()
        worst = 0.0
        for n in range(300_000):
            forger.publish(f"$log/operation/{PRODUCT}/inv{n:06d}", payload, 0)
            if n % 3000 == 0:
                before = len(answered)
                asked = time.monotonic()
                forger.publish(f"$log/operation/{PRODUCT}/{real[n % 100]}", payload, 0)
                assert len(answered) == before + 1, "a real device was not answered"
                worst = max(worst, answered[-1] - asked)
        grown = _rss_kib() - idle
        assert grown <= idle * 0.10, f"RSS grew {grown} KiB over {idle} KiB idle"
        assert worst < 1.0
        assert platform.runtime.refused == 300_000
        assert len({s.device for s in platform.status()}) == 100
    finally:
        platform.stop()


@pytest.mark.parametrize("pool", [False, True], ids=["platform", "pool"])
def test_open_registry_says_so_loudly_at_start(tmp_path: Path, pool: bool) -> None:
    """`--open-registry` is announced on stderr before anything starts (a single platform and a
    pool alike); without it there is no such line. The broker is unreachable and the pool has no
    store, so each run ends at once with its usual one-line error."""
    dead = f"127.0.0.1:{free_port()}"
    broker = f"amqp://{dead}/" if pool else f"mqtt://{dead}"
    args = ["platform", "--broker", broker, "--data-dir", str(tmp_path / "p"),
            "--http", "127.0.0.1:0", "--connect-timeout", "1"]  # fmt: skip
    warned = iotfsm(*args, "--open-registry")
    quiet = iotfsm(*args)
    assert warned.returncode == quiet.returncode == 1, warned.stderr + quiet.stderr
    first = warned.stderr.splitlines()[0]
    assert first.startswith("iotfsm platform: WARNING --open-registry: every device name"), first
    assert "anyone who reaches the broker can act as any device" in first
    assert "WARNING --open-registry" not in quiet.stderr
    expected = "joins a pool" if pool else "cannot reach the broker"
    assert expected in warned.stderr.splitlines()[-1] and expected in quiet.stderr


def test_the_desired_state_devices_table_registers_disables_and_enables(tmp_path: Path) -> None:
    """`[[devices]]` in the desired-state file: registered with their kind of login, turned away
    by `enabled = false` (entry kept), let back in when the file says so again; a wrong kind is
    refused with the entry and the field named, and nothing of that file applied."""
    broker = MemoryBroker()
    heard = listen(broker)
    path = tmp_path / "desired.toml"

    def declare(enabled: str, auth: str = "key") -> list[str]:
        path.write_text(
            f'[[devices]]\nproduct = "{PRODUCT}"\ndevices = ["d1", "d2"]\nauth = "{auth}"\n'
            f"enabled = {enabled}\n"
            f'[[devices]]\nproduct = "{PRODUCT}"\ndevices = ["c1"]\nauth = "cert"\n'
        )
        return Reconciler(platform, path).apply()

    with Platform(broker, data_dir=tmp_path / "platform") as platform:
        assert declare("true") == [
            f"devices {PRODUCT}/d1,d2 (key, enabled)",
            f"devices {PRODUCT}/c1 (cert, enabled)",
        ]
        assert [(d.device, d.auth, d.enabled) for d in platform.registry.devices()] == [
            ("c1", "cert", True), ("d1", "key", True), ("d2", "key", True),
        ]  # fmt: skip
        _ask(broker, "d1")
        assert len(heard) == 1
        assert declare("false") == [f"devices {PRODUCT}/d1,d2 (key, disabled)"]
        assert not platform.registry.admits(DeviceKey(PRODUCT, "d1"))
        assert platform.registry.get(PRODUCT, "d1") is not None  # kept, only turned away
        _ask(broker, "d1")
        assert len(heard) == 1
        with pytest.raises(DesiredStateError, match=r"devices\[0\]: 'auth' must be"):
            declare("true", auth="password")
        assert not platform.registry.admits(DeviceKey(PRODUCT, "d1"))
        declare("true")
        _ask(broker, "d1")
        assert len(heard) == 2


def _offer_url(broker: MemoryBroker, platform: Platform, device: str) -> str:
    """The URL of the firmware offer the platform sends `device` after its version report."""
    offers: list[dict[str, object]] = []
    client = broker.connect(f"device-{device}")
    client.set_handlers(lambda topic, payload: offers.append(json.loads(payload)), lambda up: None)
    client.subscribe(f"$ota/update/{PRODUCT}/{device}", 0)
    client.start()
    platform.deploy_firmware(PRODUCT, [device], "2.0", b"image for " + device.encode())
    report = {"type": "report_version", "report": {"version": "1.0"}}
    client.publish(f"$ota/report/{PRODUCT}/{device}", json.dumps(report).encode(), 1)
    wait_for("the offer", lambda: any(o.get("type") == "update_firmware" for o in offers), 5)
    client.stop()
    return str(next(o for o in offers if o.get("type") == "update_firmware")["url"])


def _status(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return int(refused.code)


def test_a_url_handed_out_before_a_disable_stops_working_at_once(tmp_path: Path) -> None:
    """A signed URL names its device; the file service asks the registry at every request,
    so disabling or removing a device cuts its downloads short of the URL's expiry."""
    broker = MemoryBroker()
    with Platform(broker, data_dir=tmp_path / "platform") as platform:
        platform.register_device(PRODUCT, "real")
        platform.register_device(PRODUCT, "other")
        url = _offer_url(broker, platform, "real")
        assert f"device={PRODUCT}%2Freal" in url
        assert _status(url) == 200
        platform.registry.disable(PRODUCT, "real")
        assert _status(url) == 403
        platform.registry.enable(PRODUCT, "real")
        assert _status(url) == 200
        # the URL is signed for its device: naming another admitted one breaks the signature
        assert _status(url.replace("%2Freal", "%2Fother")) == 403
        platform.registry.remove(PRODUCT, "real")
        assert _status(url) == 403
