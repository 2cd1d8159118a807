"""The platform's device registry: which devices exist, which may speak, and their keys.

Nothing that arrives on a device's topic proves it came from that device, and every well-formed
name used to get a session kept for good. The registry is what the platform (and the broker's
auth backend) asks instead: a device must be registered and enabled to get a session, an answer
or a signed URL, so the number of sessions is bounded by the registry, not by what a client
invents.

Keys are not kept in the database. Each product has one secret in a file of its own (mode 0600,
in a directory the operator can move off the data volume); a device's key is derived from it with
HMAC, its product id, its name and a generation that grows each time the device is added again,
so a copied store file hands out no key, and a removed device's old key stops working for good.
Keys that Tencent or another system issued can be imported; they are kept beside the product
secret, in the same kind of 0600 file, never in the store.

The registry lives in the store's records, so `iotfsm registry …` in another process changes
what a running platform admits: the platform looks whether the store changed (SQLite's
`data_version`) at most once a second on the message path, and reloads the table when it did.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import attrs

from ...fsm.clock import Clock, RealClock
from ...machines import all_features
from ...machines.feature import DeviceKey
from ..durable import write_file_atomic
from ..store.session_store import SessionStore
from ..topics import TopicError, check_key, template_filter
from .credentials import DeviceCredentials, parse_username

log = logging.getLogger(__name__)

AuthKind = Literal["key", "cert"]
AUTH_KINDS: tuple[AuthKind, ...] = ("key", "cert")
TABLE = "registry"
REFRESH_EVERY = 1.0
"""Seconds between looks at whether another process changed the registry."""
_KEY_LABEL = b"iotfsm device key v1"


class RegistryError(ValueError):
    """A registry operation that cannot be done; the message says what to do instead."""


@attrs.frozen
class RegisteredDevice:
    product: str
    device: str
    enabled: bool
    auth: AuthKind
    """"key": Tencent key credentials (psk); "cert": a client certificate."""
    generation: int
    """Grows each time the device is added again, so its derived key changes."""

    @property
    def key(self) -> DeviceKey:
        return DeviceKey(self.product, self.device)


@runtime_checkable
class ChangeCounter(Protocol):
    """A store that can tell whether another process wrote to it (SQLite's data_version)."""

    def data_version(self) -> int: ...


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


def _read_private(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & 0o077:
        raise RegistryError(
            f"{path} is readable by others (mode {mode & 0o777:o}); it holds a secret: "
            f"chmod 600 {path}"
        )
    return path.read_bytes()


class ProductSecrets:
    """One secret per product, in files `<dir>/<product>.key` (0600) outside the database;
    imported device keys in `<dir>/<product>.imported.json` (0600)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._cache: dict[str, bytes] = {}

    def _path(self, product: str, suffix: str) -> Path:
        check_key(DeviceKey(product, "x"))
        return self.directory / f"{product}{suffix}"

    def get(self, product: str) -> bytes:
        with self._lock:
            cached = self._cache.get(product)
            if cached is not None:
                return cached
            path = self._path(product, ".key")
            if not path.is_file():
                raise RegistryError(
                    f"no secret for product {product} in {self.directory}: register a device of "
                    "it first (iotfsm registry add), or restore the product secrets directory"
                )
            secret = base64.b64decode(_read_private(path))
            self._cache[product] = secret
            return secret

    def ensure(self, product: str) -> bytes:
        """The product's secret, made (32 random bytes, 0600) when it has none yet."""
        path = self._path(product, ".key")
        with self._lock:
            if not path.exists():
                _private_dir(self.directory)
                write_file_atomic(path, base64.b64encode(secrets.token_bytes(32)) + b"\n")
        return self.get(product)

    def imported(self, product: str) -> dict[str, str]:
        path = self._path(product, ".imported.json")
        if not path.is_file():
            return {}
        doc = json.loads(_read_private(path))
        return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}

    def set_imported(self, product: str, device: str, psk: str | None) -> None:
        """Keep (or, with None, forget) a device key issued elsewhere."""
        with self._lock:
            keys = self.imported(product)
            if psk is None:
                if keys.pop(device, None) is None:
                    return
            else:
                keys[device] = psk
            _private_dir(self.directory)
            path = self._path(product, ".imported.json")
            write_file_atomic(path, json.dumps(keys, sort_keys=True).encode())


def derive_psk(product_secret: bytes, product: str, device: str, generation: int) -> str:
    """The device key: base64 of 16 bytes, the length Tencent's console hands out."""
    message = b"\0".join((_KEY_LABEL, product.encode(), device.encode(), str(generation).encode()))
    return base64.b64encode(
        hmac.new(product_secret, message, hashlib.sha256).digest()[:16]
    ).decode()


def device_topics(key: DeviceKey) -> tuple[list[str], list[str]]:
    """(publish, subscribe): the topics a device may use, from every feature's topic pair, so
    broker ACLs and auth backends never spell topic names out themselves."""
    check_key(key)
    up: dict[str, None] = {}
    down: dict[str, None] = {}
    for feature in all_features():
        # a feature may have one direction only (broadcast is down only): "" means none
        # RRPC's processId level is `+`: publish `$rrpc/txd/{p}/{d}/+`, subscribe `…/rxd/…/+`
        if feature.up_topic:
            up[template_filter(feature.up_topic, key.product, key.device)] = None
        if feature.down_topic:
            down[template_filter(feature.down_topic, key.product, key.device)] = None
    return list(up), list(down)


class RefusalLog:
    """Says once per name that a device was refused, and at most `burst` lines per `window`
    seconds overall: 300k invented names must not become 300k log lines or 300k remembered
    names (the memory of names is bounded and starts over when full)."""

    def __init__(self, burst: int = 10, window: float = 10.0, names: int = 4096) -> None:
        self.burst, self.window, self.names = burst, window, names
        self._seen: set[DeviceKey] = set()
        self._window_start = 0.0
        self._in_window = 0
        self._suppressed = 0
        self._lock = threading.Lock()
        self.refused = 0

    def note(self, key: DeviceKey, why: str) -> None:
        with self._lock:
            self.refused += 1
            if key in self._seen:
                return
            if len(self._seen) >= self.names:
                self._seen.clear()
            self._seen.add(key)
            now = time.monotonic()
            if now - self._window_start >= self.window:
                if self._suppressed:
                    log.warning("%d more unknown device names refused", self._suppressed)
                self._window_start, self._in_window, self._suppressed = now, 0, 0
            if self._in_window >= self.burst:
                self._suppressed += 1
                return
            self._in_window += 1
        log.warning("refused %s/%s: %s", key.product, key.device, why)


class Registry:
    def __init__(
        self,
        store: SessionStore,
        product_secrets: ProductSecrets,
        *,
        open: bool = False,
        clock: Clock | None = None,
    ) -> None:
        """`open=True` admits every well-formed name (demos, and tests of other things): the
        behaviour before the registry, which anyone who can reach the broker can abuse."""
        self._store = store
        self._counter = store if isinstance(store, ChangeCounter) else None
        """The store as a change counter, or None for one that cannot tell (MemoryStore):
        decided once, as `admits` runs per message and isinstance on a runtime-checkable
        Protocol walks its members each time."""
        self.secrets = product_secrets
        self.open = open
        self._clock: Clock = clock or RealClock()
        self._lock = threading.RLock()
        self._known: dict[DeviceKey, RegisteredDevice] = {}
        self._version: int | None = None
        self._next_look = 0.0
        self.refusals = RefusalLog()
        self.on_change: Callable[[RegisteredDevice, bool], None] | None = None
        """Called with (device, still registered) when this process changes a device: the
        platform drops a removed device's sessions."""
        self.reload()

    # ---- reading ----------------------------------------------------------------------------

    def reload(self) -> None:
        """Read the table again (another process may have changed it)."""
        with self._lock:
            if self._counter is not None:
                self._version = self._counter.data_version()
            known = {}
            for _, doc in self._store.items(TABLE):
                try:
                    entry = RegisteredDevice(**doc)
                except (TypeError, ValueError):
                    log.warning("registry entry %r is malformed; skipped", doc)
                    continue
                known[entry.key] = entry
            self._known = known

    def _look(self) -> None:
        if self._counter is None:
            return
        now = time.monotonic()
        if now < self._next_look:
            return
        self._next_look = now + REFRESH_EVERY
        if self._counter.data_version() != self._version:
            self.reload()

    def _catch_up(self) -> None:
        """Before a change: read the table again only if another connection changed it since
        (a store without a change counter is read every time). Reading it for every `add` made
        registering 2,000 devices take 45 s."""
        if self._counter is None or self._counter.data_version() != self._version:
            self.reload()

    def get(self, product: str, device: str) -> RegisteredDevice | None:
        self._look()
        return self._known.get(DeviceKey(product, device))

    def devices(self, product: str | None = None) -> list[RegisteredDevice]:
        self._look()
        return sorted(
            (d for d in self._known.values() if product in (None, d.product)),
            key=lambda d: (d.product, d.device),
        )

    def products(self) -> set[str]:
        self._look()
        return {k.product for k in self._known}

    def admits(self, key: DeviceKey) -> bool:
        """May this device speak? The message path asks this for every inbound message."""
        if self.open:
            return True
        self._look()
        entry = self._known.get(key)
        return entry is not None and entry.enabled

    def gate(self, key: DeviceKey) -> bool:
        """`admits`, and a rate-limited log line when it does not (`admits` inline: this is
        the message path's gate)."""
        if self.open:
            return True
        self._look()
        entry = self._known.get(key)
        if entry is not None and entry.enabled:
            return True
        self.refusals.note(key, "disabled" if entry is not None else "not registered")
        return False

    # ---- changing ---------------------------------------------------------------------------

    def add(
        self, product: str, device: str, auth: AuthKind = "key", psk: str | None = None
    ) -> RegisteredDevice:
        """Register a device (enabled). A device added again after `remove` gets a new key.
        `psk` imports a key issued elsewhere (e.g. Tencent's console) instead of deriving one."""
        try:
            key = check_key(DeviceKey(product, device))
        except TopicError as exc:
            raise RegistryError(str(exc)) from None
        if auth not in AUTH_KINDS:
            raise RegistryError(f"auth {auth!r} must be one of {AUTH_KINDS}")
        if psk is not None:
            if auth != "key":
                raise RegistryError("a psk is for key devices; certificate devices have none")
            DeviceCredentials(product, device, psk)  # raises on a malformed key
        with self._lock:
            self._catch_up()
            if key in self._known:
                raise RegistryError(f"{product}/{device} is registered already")
            generation = self._generation(key) + 1
            entry = RegisteredDevice(product, device, True, auth, generation)
            if auth == "key":
                self.secrets.ensure(product)
            self.secrets.set_imported(product, device, psk)
            self._write(entry)
        return entry

    def _generation(self, key: DeviceKey) -> int:
        value = self._store.get(f"{TABLE}_generations", f"{key.product}/{key.device}")
        return value if isinstance(value, int) else 0

    def remove(self, product: str, device: str) -> None:
        with self._lock:
            entry = self._require(product, device)
            self._store.put(f"{TABLE}_generations", f"{product}/{device}", entry.generation)
            self._store.delete(TABLE, f"{product}/{device}")
            self._store.commit()
            self.secrets.set_imported(product, device, None)
            self._known.pop(entry.key, None)
        if self.on_change is not None:
            self.on_change(entry, False)

    def enable(self, product: str, device: str) -> None:
        self._set_enabled(product, device, True)

    def disable(self, product: str, device: str) -> None:
        self._set_enabled(product, device, False)

    def _set_enabled(self, product: str, device: str, enabled: bool) -> None:
        with self._lock:
            entry = attrs.evolve(self._require(product, device), enabled=enabled)
            self._write(entry)

    def _require(self, product: str, device: str) -> RegisteredDevice:
        self._catch_up()
        entry = self._known.get(DeviceKey(product, device))
        if entry is None:
            raise RegistryError(
                f"{product}/{device} is not registered (iotfsm registry list shows who is)"
            )
        return entry

    def _write(self, entry: RegisteredDevice) -> None:
        self._store.put(TABLE, f"{entry.product}/{entry.device}", attrs.asdict(entry))
        self._store.commit()
        self._known[entry.key] = entry
        if self.on_change is not None:
            self.on_change(entry, True)

    # ---- keys and logins --------------------------------------------------------------------

    def device_psk(self, product: str, device: str) -> str:
        """The base64 key of a registered key device (secret: show it to its owner only)."""
        entry = self.get(product, device)
        if entry is None:
            raise RegistryError(f"{product}/{device} is not registered")
        if entry.auth != "key":
            raise RegistryError(f"{product}/{device} logs in with a certificate; it has no key")
        imported = self.secrets.imported(product).get(device)
        if imported is not None:
            return imported
        return derive_psk(self.secrets.get(product), product, device, entry.generation)

    def credentials(self, product: str, device: str) -> DeviceCredentials:
        return DeviceCredentials(product, device, self.device_psk(product, device))

    def psk(self, key: DeviceKey) -> str | None:
        """The key of an admitted key device, else None (the log endpoint's lookup)."""
        if not self.admits(key):
            return None
        try:
            return self.device_psk(*key)
        except RegistryError:
            return None

    def check_login(
        self, username: str, password: str, client_id: str | None = None
    ) -> DeviceKey | None:
        """The device that these Tencent key credentials prove, or None: unparseable, expired,
        another device's signature, unregistered, disabled, or a certificate device. Never
        raises on bad input: it comes from the network."""
        try:
            parsed = parse_username(username)
        except ValueError:
            return None
        if client_id is not None and client_id != parsed.client_id:
            return None
        if int(parsed.expiry) < self._clock.now():
            return None
        for product in sorted(self.products(), key=len, reverse=True):
            if not parsed.client_id.startswith(product):
                continue
            entry = self.get(product, parsed.client_id[len(product) :])
            if entry is None or not entry.enabled or entry.auth != "key":
                continue
            try:
                credentials = self.credentials(entry.product, entry.device)
            except (RegistryError, ValueError):
                continue
            if credentials.verify_password(username, password, now=self._clock.now()):
                return entry.key
        return None
