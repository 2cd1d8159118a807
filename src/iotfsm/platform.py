"""`Platform`: the platform role of every feature, as server code embeds it.

One object per server process holds a session per device and feature, the HTTP file service that
serves firmware, and a store (SQLite in the data directory) so that tasks and progress survive a
restart. Server code calls it from its own threads and observes steps and outcomes by callback.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from ._role import RoleFacade
from .adapters.connect import Broker, MqttOptions, transport_for
from .adapters.durable import create_file_exclusive
from .adapters.http.blobs import BlobStore
from .adapters.http.broker_auth import BrokerAuthServer, platform_broker_auth
from .adapters.http.file_service import FileRef, FileService, UploadRecord
from .adapters.http.log_endpoint import LogEndpoint, LogFollower, LogLine
from .adapters.http.log_upload import REPORT_LOG_PATH
from .adapters.http.transfer import file_md5
from .adapters.identity.broker_account import BrokerAccount
from .adapters.identity.firmware_signing import FirmwareSigner, PrivateKeySource, load_private_key
from .adapters.identity.registry import (
    AuthKind,
    ProductSecrets,
    RegisteredDevice,
    Registry,
    RegistryError,
)
from .adapters.runtime import Runtime
from .adapters.store.config_store import ConfigError, ConfigRecords, ConfigVersion
from .adapters.store.session_store import MemoryStore, SessionStore, SqliteStore
from .adapters.topics import check_key
from .campaign_spec import CampaignSpec
from .campaign_spec import parse as parse_campaign
from .campaigns import CampaignRunner, CampaignSettings, CampaignStatus
from .fsm.clock import Clock
from .fsm.events import Event
from .fsm.trace import Tracer
from .machines import DeviceKey, all_features, ota, resources, rrpc
from .machines.campaign import CampaignError, Firmware, Plan
from .machines.config import (
    ConfigChanged,
    ConfigLoaded,
    LoadProductConfig,
    ProductConfig,
    PushConfig,
)
from .machines.log_level import LEVELS, SetLogLevel
from .machines.log_level import PlatformContext as PlatformLogContext
from .machines.names import check_name
from .machines.transfer import TIMEOUT
from .platform_messaging import PlatformMessaging

log = logging.getLogger(__name__)

EVERY_DEVICE = "*"


@attrs.frozen(order=True)
class SessionStatus:
    feature: str
    product: str
    device: str
    state: str


@attrs.frozen
class FirmwareStatus:
    """Where one device stands with its firmware task."""

    state: str
    target: str
    reported: str
    percent: int
    result_code: int
    result_msg: str
    drift: str = ""
    """The version the device reported after it had reached the target ("" when it has not
    left it): the target is being offered again."""


@attrs.frozen
class Deployment:
    product: str
    devices: tuple[str, ...]
    """Device names, or ("*",) for every device of the product, including ones seen later."""
    version: str
    file_id: str
    size: int
    md5: str


@attrs.frozen
class Delivery:
    """One resource offered to one device, and how it ended."""

    product: str
    device: str
    name: str
    md5: str
    size: int
    state: str
    code: int
    message: str


@attrs.frozen
class UploadInfo:
    """One upload a device asked for; `stored` once the PUT passed its size and md5 checks."""

    product: str
    device: str
    name: str
    md5: str
    size: int
    state: str
    percent: int
    code: int
    message: str
    stored: bool
    path: str


def _record_key(key: DeviceKey, name: str, md5: str) -> str:
    """The same (device, name, md5) always maps to the same key, so a repeated upload (the C
    SDK uploads again when its final report goes unanswered) lands on the same file."""
    digest = hashlib.sha256(f"{key.product}/{key.device}/{name}/{md5}".encode()).hexdigest()
    return f"r-{digest[:40]}"


def _matches(product: str, device: str, want_product: str | None, want_device: str | None) -> bool:
    return want_product in (None, product) and want_device in (None, device)


OtaHook = Callable[[DeviceKey, ota.OtaFinished], None]


class Platform(RoleFacade, PlatformMessaging):
    def __init__(
        self,
        broker: Broker,
        *,
        data_dir: str | Path | None = None,
        http_host: str = "127.0.0.1",
        http_port: int = 0,
        public_base: str | None = None,
        url_ttl: float = 3600.0,
        store: SessionStore | None = None,
        products: Sequence[str] | None = None,
        on_step: Tracer | None = None,
        on_ota_finished: OtaHook | None = None,
        clock: Clock | None = None,
        mqtt: MqttOptions | None = None,
        share_group: str | None = None,
        firmware_key: PrivateKeySource | None = None,
        registry: Registry | None = None,
        open_registry: bool = False,
        secrets_dir: str | Path | None = None,
        max_upload: int | None = None,
        broker_auth: tuple[str, int] | None = None,
        broker_account: BrokerAccount | None = None,
        blobs: BlobStore | None = None,
    ) -> None:
        """`data_dir` keeps the SQLite store and the served files (default: a temporary folder
        and an in-memory store, gone at `stop`). The file service listens on
        `http_host:http_port` and hands out URLs under `public_base` (default its own address;
        set it when devices reach it through a proxy on port 80/443). `products` limits the
        subscriptions; `share_group` lets workers split one broker's load (MQTT shared
        subscriptions; Mosquitto does not share `$` topics, so partition by `products` there).
        Only devices in `registry` (default: one kept in the store, with the product secrets in
        `secrets_dir`, default `data_dir/product-secrets`) get sessions and answers;
        `open_registry=True` admits any well-formed name, for demos on a trusted network.
        `broker_auth=(host, port)` serves RabbitMQ's HTTP auth backend from the registry there,
        and logs in to the broker as `broker_account` (default: the `mqtt` login if it has one,
        else `iotfsm-platform` with a password generated into `data_dir/broker-password`).
        `firmware_key` (an Ed25519 key or its PEM file, mode 0600) signs every deployed image:
        offers then carry `firmware_sha256` and `firmware_signature` (FirmwareKeyError, a
        ValueError, for a key it cannot use or a file others may read).
        `max_upload` bounds a device upload in bytes (None: only the free disk space does).
        `blobs` keeps the served files (default: the data directory; a pool shares PostgreSQL's).
        """
        self._messaging_init()
        signing_key = None if firmware_key is None else load_private_key(firmware_key)
        if max_upload is not None and max_upload < 1:
            raise ValueError(f"max_upload must be a positive number of bytes, got {max_upload}")
        self.max_upload = max_upload
        self._own_dir = data_dir is None
        self.data_dir = Path(
            tempfile.mkdtemp(prefix="iotfsm-platform-") if data_dir is None else data_dir
        )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if store is None:
            store = (
                MemoryStore() if self._own_dir else SqliteStore(self.data_dir / "platform.sqlite3")
            )
        self.store = store
        self.firmware_signer = None if signing_key is None else FirmwareSigner(signing_key, store)
        self.registry = registry or Registry(
            store,
            ProductSecrets(secrets_dir or self.data_dir / "product-secrets"),
            open=open_registry,
            clock=clock,
        )
        if self.registry.open:
            log.warning(
                "open registry: any client that reaches the broker can act as any device; "
                "register devices and drop open_registry outside a trusted test network"
            )
        self.url_ttl = url_ttl
        self._records = threading.Lock()
        """Serializes read-modify-write of upload and delivery records: the file service's
        threads and the runtime update the same record (stored vs reported state)."""
        self._on_ota_finished = on_ota_finished
        self.files = FileService(
            self.data_dir / "files",
            host=http_host,
            port=http_port,
            public_base=public_base,
            secret=self._secret(),
            clock=clock,
            blobs=blobs,
        )
        # a URL handed to a device is served only while the registry lets that device in
        self.files.admits = lambda product, device: self.registry.admits(DeviceKey(product, device))
        self.broker_auth: BrokerAuthServer | None = None
        if broker_auth is not None:
            self.broker_auth, mqtt = platform_broker_auth(
                self.registry, broker_auth, self.data_dir, broker_account, mqtt
            )
        self.runtime = Runtime(
            "platform",
            transport_for(broker, None, None, mqtt, session_id=self._session_id()),
            all_features(),
            products=products,
            share_group=share_group,
            clock=clock,
            tracer=on_step,
            # an in-memory store would only copy sessions that already live in memory
            store=None if isinstance(store, MemoryStore) else store,
            admit=self.registry.gate,
            handlers={
                ota.OfferFirmware: self._offer,
                ota.OtaFinished: self._finished,
                ota.OtaAttemptFailed: self._attempt_failed,
                resources.GrantUpload: self._grant_upload,
                resources.UploadReported: self._upload_reported,
                resources.UploadSilent: self._upload_silent,
                resources.SendDownloadTask: self._send_download_task,
                resources.ResourceDelivered: self._resource_delivered,
                LoadProductConfig: self._load_config,
                **self._messaging_handlers(),
            },
        )
        self.runtime.on_session_created = self._session_created
        self.runtime.restorable = self._restorable
        self.registry.on_change = self._registry_changed
        self.runtime.contexts["log_level"] = self._log_level_context
        self.runtime.contexts["rrpc"] = self._rrpc_context
        self.files.on_upload(self._upload_stored)
        self.configs = ConfigRecords(store)
        """Each product's remote config: the last five versions and the switch."""
        self.logs = LogEndpoint(store, self.registry, clock=self.runtime.clock)
        """`POST /device/reportlog` on the file service: devices' uploaded log lines."""
        self.files.add_post_route(REPORT_LOG_PATH, self.logs.handle, max_body=256 * 1024)
        self.campaigns = CampaignRunner(self.runtime, store)
        """Rollout campaigns (issue 18), kept in the store; `start_campaign` and friends."""
        self.campaigns.starter = self._start_queued

    def _session_id(self) -> str | None:
        """A platform with a data directory keeps one MQTT client id for good, with a persistent
        session: reports devices send while it is down (an OTA's `done`, a download's result)
        wait at the broker instead of being lost. Without one it is a new client every time.
        Two platforms must not share a data directory (they would take over each other's
        session, as they would corrupt each other's store)."""
        if self._own_dir:
            return None
        path = self.data_dir / "mqtt-client-id"
        if not path.exists():
            path.write_text(f"iotfsm-platform-{secrets.token_hex(6)}\n")
        return path.read_text().strip()

    def _secret(self) -> bytes:
        """The URL-signing key, kept in the data directory so URLs outlive a restart."""
        path = self.data_dir / "url-secret"
        if not path.exists():  # made 0600 from the start: it signs every transfer URL
            with contextlib.suppress(FileExistsError):
                create_file_exclusive(path, secrets.token_bytes(32))
        return path.read_bytes()

    def start(self) -> Platform:
        self.files.start()
        if self.broker_auth is not None:
            self.broker_auth.start()  # before the platform's own login, which it answers
        super().start()
        self.campaigns.start()
        return self

    def stop(self) -> None:
        self.campaigns.stop()
        super().stop()
        self._fail_calls()
        if self.broker_auth is not None:
            self.broker_auth.stop()
        self.files.stop()
        self.store.close()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # ---- firmware ---------------------------------------------------------------------------

    def deploy_firmware(
        self,
        product_id: str,
        devices: Sequence[str] | Literal["*"],
        version: str,
        image: str | Path | bytes,
    ) -> Deployment:
        """Make these devices (a list, or "*" for every device of the product, now and later)
        run `version`. Devices that are offline get the offer when they next report."""
        problem = ota.version_problem(version)
        if problem is not None:
            raise ValueError(f"version {version[:40]!r} is refused: {problem}")
        names = (EVERY_DEVICE,) if devices == EVERY_DEVICE else tuple(devices)
        keys = [] if names == (EVERY_DEVICE,) else [self._device(product_id, n) for n in names]
        check_key(DeviceKey(product_id, "x"))
        ref = self._publish_image(image)
        if self.firmware_signer is not None:  # signed now: a deploy fails, not an offer
            path = self._image(ref.file_id)
            self.firmware_signer.signature(product_id, version, ref.file_id, path)
        deployment = Deployment(product_id, names, version, ref.file_id, ref.size, ref.md5)
        self.store.put(
            "deployments", f"{product_id}/{version}/{','.join(names)}", attrs.asdict(deployment)
        )
        if names == (EVERY_DEVICE,):
            self.store.put("product_firmware", product_id, attrs.asdict(deployment))
            keys = sorted(
                {s.key for _, s in self.runtime.all_sessions() if s.key.product == product_id}
            )
        command = ota.DeployFirmware(version, ref.file_id, ref.size, ref.md5)
        for key in keys:
            self.runtime.post("ota", key, command)
        return deployment

    def publish_image(self, image: str | Path | bytes) -> FileRef:
        """Serve a firmware image (stored once per content) without offering it to anyone:
        what an image uploaded through the management API becomes before a deployment or a
        campaign names it (`image_path(ref.file_id)` is then the `image` to pass them)."""
        return self._publish_image(image)

    def image_path(self, file_id: str) -> Path:
        """Where a published image is kept."""
        return self._image(file_id)

    def _image(self, file_id: str) -> Path:
        """Where the file service keeps a published image (what the signer hashes)."""
        return self.files.data_dir / "files" / check_name(file_id)

    def _publish_image(self, image: str | Path | bytes) -> FileRef:
        return self._publish_source(image, "fw")

    def _publish_source(self, source: str | Path | bytes, kind: str) -> FileRef:
        """Serve a file under a name made of its md5, so the same content is stored once."""
        if isinstance(source, bytes):
            md5 = hashlib.md5(source).hexdigest()
        else:
            source = Path(source)
            if not source.is_file():
                raise FileNotFoundError(f"{source} does not exist")
            md5 = file_md5(source)
        name = f"{kind}-{md5}"
        return self.files.published(name) or self.files.publish_file(source, name=name)

    def cancel_firmware(self, product_id: str, device_name: str) -> None:
        self.runtime.post("ota", self._device(product_id, device_name), ota.CancelFirmware())

    def firmware_status(self, product_id: str, device_name: str) -> FirmwareStatus:
        session = self.runtime.session("ota", self._device(product_id, device_name))
        c: ota.PlatformContext = session.ctx
        return FirmwareStatus(
            session.state, c.target, c.reported, c.percent, c.result_code, c.result_msg, c.drift
        )

    def _log_level_context(self, key: DeviceKey) -> PlatformLogContext:
        """A device first seen gets its product's level, if one was set for every device."""
        level = self.store.get("product_log_level", key.product)
        return PlatformLogContext(key.product, level if isinstance(level, int) else 0)

    def _rrpc_context(self, key: DeviceKey) -> rrpc.PlatformContext:
        """A device's first processIds start from the clock's milliseconds, so a new session
        (a platform without a store, restarted) never reissues a recent processId whose late
        answer could be taken for a new call's."""
        return rrpc.PlatformContext(last_id=int(self.runtime.clock.now() * 1000) % 10**13)

    def _session_created(self, feature: str, key: DeviceKey) -> None:
        if feature != "ota":
            return
        doc = self.store.get("product_firmware", key.product)
        if isinstance(doc, dict):
            d = Deployment(**{**doc, "devices": tuple(doc["devices"])})
            self.runtime.post("ota", key, ota.DeployFirmware(d.version, d.file_id, d.size, d.md5))

    def _offer(self, key: DeviceKey, effect: ota.OfferFirmware) -> None:
        url = self.files.signed_get_url(effect.file_id, self.url_ttl, key)
        windows = ota.burn_windows_at(effect.burn, self.runtime.clock.now())
        if effect.burn and windows is None:  # an offer without them would let it burn anywhere
            log.warning(
                "ota %s/%s: %s not offered: its burn windows have all passed", *key, effect.version
            )
            return
        offer = ota.UpdateFirmware(
            effect.size, effect.md5, url, effect.version, burn_windows=windows
        )
        if self.firmware_signer is not None:
            try:
                signed = self.firmware_signer.signature(
                    key.product, effect.version, effect.file_id, self._image(effect.file_id)
                )
            except OSError as exc:  # the image is gone: the device's fetch gets 404 anyway
                log.warning("cannot sign %s for %s/%s: %s", effect.file_id, *key, exc)
            else:
                offer = attrs.evolve(offer, sha256=signed.sha256, signature=signed.signature)
        self.runtime.publish("ota", key, offer, 0)

    def _finished(self, key: DeviceKey, effect: ota.OtaFinished) -> None:
        level = logging.INFO if effect.ok else logging.WARNING
        log.log(
            level,
            "ota %s/%s: %s %s (%s)",
            *key,
            "ran" if effect.ok else "gave up on",
            effect.version,
            effect.message,
        )
        self.campaigns.ota_finished(key, effect)
        if self._on_ota_finished is not None:
            self._on_ota_finished(key, effect)

    def _attempt_failed(self, key: DeviceKey, effect: ota.OtaAttemptFailed) -> None:
        self.campaigns.ota_attempt_failed(key, effect)

    # ---- campaigns --------------------------------------------------------------------------

    def start_campaign(
        self,
        product_id: str,
        version: str,
        image: str | Path | bytes,
        waves: Sequence[Sequence[str]],
        *,
        settings: CampaignSettings | None = None,
        campaign_id: str | None = None,
    ) -> str:
        """Roll `version` out to registered devices in `waves` (lists of names, e.g. from
        `machines.campaign.plan_waves`), braked as `settings` say. Returns the campaign's id."""
        if not 1 <= len(version) <= 32:
            raise CampaignError(f"version {version[:40]!r} must be 1-32 characters")
        groups = tuple(tuple(self._device(product_id, d).device for d in w) for w in waves)
        ref = self._publish_image(image)
        firmware = Firmware(version, ref.file_id, ref.size, ref.md5)
        options = attrs.asdict(settings or CampaignSettings(), recurse=False)
        return self.campaigns.launch(Plan(product_id, firmware, groups, **options), campaign_id)

    def start_declared_campaign(self, spec: CampaignSpec) -> str:
        """Start a campaign as declared (desired-state `[[campaigns]]`, `iotfsm campaign start`):
        its waves split over the product's devices now, its id the operator's. Paused when
        declared so; a declared `cancelled` is refused (there is nothing to start)."""
        if spec.state == "cancelled":
            raise CampaignError(f"campaign {spec.id!r} is declared cancelled: nothing to start")
        waves = spec.split(self.product_devices(spec.product))
        cid = self.start_campaign(
            spec.product,
            spec.version,
            spec.file,
            waves,
            settings=spec.settings,
            campaign_id=spec.id,
        )
        if spec.state == "paused":
            self.pause_campaign(cid)
        return cid

    def _start_queued(self, doc: dict[str, Any]) -> str:
        """A start queued by `iotfsm campaign start`: checked again here (the file it names is
        absolute), then started like a declared one."""
        where = f"campaign start {str(doc.get('id'))[:64]!r}"
        return self.start_declared_campaign(parse_campaign(doc, where, Path("/")))

    def product_devices(self, product_id: str) -> list[str]:
        """The product's registered devices (and, under an open registry, those with sessions)."""
        names = {d.device for d in self.registry.devices(product_id)}
        if self.registry.open:
            names |= {
                k.device
                for _, s in self.runtime.all_sessions()
                if (k := s.key).product == product_id
            }
        return sorted(names)

    def campaign_status(self, campaign_id: str) -> CampaignStatus:
        """State, per-wave counts, reason and history of a campaign."""
        return self.campaigns.status(campaign_id)

    def pause_campaign(self, campaign_id: str) -> None:
        self.campaigns.pause(campaign_id)

    def resume_campaign(self, campaign_id: str) -> None:
        self.campaigns.resume(campaign_id)

    def next_campaign_wave(self, campaign_id: str) -> None:
        """Start the next wave now (campaigns with `advance="operator"`, or to skip a threshold)."""
        self.campaigns.next_wave(campaign_id)

    def cancel_campaign(self, campaign_id: str) -> None:
        self.campaigns.cancel(campaign_id)

    def retry_failed(self, campaign_id: str) -> None:
        self.campaigns.retry_failed(campaign_id)

    # ---- resources --------------------------------------------------------------------------

    def offer_resource(
        self, product_id: str, devices: Sequence[str], name: str, source: str | Path | bytes
    ) -> list[Delivery]:
        """Queue the file for these devices under `name`; an online device gets it pushed now,
        an offline one when it next asks (devices ask after every reconnect)."""
        check_name(name, "resource name")
        keys = [self._device(product_id, d) for d in devices]
        ref = self._publish_source(source, "res")
        offered = []
        for key in keys:
            record = Delivery(key.product, key.device, name, ref.md5, ref.size, "queued", 0, "")
            self.store.put("deliveries", _record_key(key, name, ref.md5), attrs.asdict(record))
            offer = resources.OfferResource(name, ref.file_id, ref.size, ref.md5)
            self.runtime.post("resource_download", key, offer)
            offered.append(record)
        return offered

    def deliveries(
        self, product_id: str | None = None, device: str | None = None
    ) -> list[Delivery]:
        """Resources offered to devices, with their state (queued, done or fail)."""
        found = [Delivery(**doc) for _, doc in self.store.items("deliveries")]
        return [d for d in found if _matches(d.product, d.device, product_id, device)]

    def uploads(self, product_id: str | None = None, device: str | None = None) -> list[UploadInfo]:
        """Uploads devices asked for, with their state and whether the file is stored."""
        found = [UploadInfo(**doc) for _, doc in self.store.items("uploads")]
        return [u for u in found if _matches(u.product, u.device, product_id, device)]

    def _grant_upload(self, key: DeviceKey, effect: resources.GrantUpload) -> None:
        refusal = self.files.upload_refusal(effect.size, self.max_upload)
        if refusal is not None:
            event = resources.UploadRefused(effect.name, effect.size, effect.md5, refusal)
            self.runtime.post("resource_upload", key, event)
            return
        upload_key = _record_key(key, effect.name, effect.md5)
        with self._records:
            self._record_grant(key, effect, upload_key)
        url = self.files.signed_put_url(upload_key, effect.size, effect.md5, self.url_ttl, key)
        answer = resources.CreateUploadTaskRsp(effect.size, effect.name, effect.md5, url)
        self.runtime.publish("resource_upload", key, answer, 0)

    def _record_grant(self, key: DeviceKey, effect: resources.GrantUpload, upload_key: str) -> None:
        if not isinstance(self.store.get("uploads", upload_key), dict):
            info = UploadInfo(
                key.product,
                key.device,
                effect.name,
                effect.md5,
                effect.size,
                "granted",
                0,
                0,
                "",
                False,
                "",
            )
            self.store.put("uploads", upload_key, attrs.asdict(info))

    def _upload_reported(self, key: DeviceKey, effect: resources.UploadReported) -> None:
        with self._records:
            self._record_report(key, effect)

    def _record_report(self, key: DeviceKey, effect: resources.UploadReported) -> None:
        for upload_key, doc in self.store.items("uploads"):
            same = (doc["product"], doc["device"], doc["name"]) == (*key, effect.name)
            if same and doc["state"] not in ("done", "fail"):
                doc.update(state=effect.state, code=effect.code, message=effect.message)
                if effect.percent is not None or effect.state == "done":
                    doc["percent"] = 100 if effect.state == "done" else effect.percent
                self.store.put("uploads", upload_key, doc)

    def _upload_stored(self, record: UploadRecord) -> None:
        """The file service accepted a PUT (size and Content-MD5 matched)."""
        with self._records:
            doc = self.store.get("uploads", record.key)
            if isinstance(doc, dict):
                doc.update(stored=True, path=str(record.path))
                self.store.put("uploads", record.key, doc)

    def _upload_silent(self, key: DeviceKey, effect: resources.UploadSilent) -> None:
        """No final report came. It may have been lost without the device noticing (there is no
        request id: the answer to an earlier progress report can pass for the final answer), so
        the record ends on what the platform knows: done if the file arrived whole, else fail."""
        with self._records:
            for upload_key, doc in self.store.items("uploads"):
                same = (doc["product"], doc["device"], doc["name"]) == (*key, effect.name)
                if not same or doc["state"] in ("done", "fail"):
                    continue
                if doc["stored"]:
                    doc.update(state="done", percent=100, code=0, message=effect.message)
                else:
                    doc.update(state="fail", code=TIMEOUT, message=effect.message)
                self.store.put("uploads", upload_key, doc)

    def _send_download_task(self, key: DeviceKey, effect: resources.SendDownloadTask) -> None:
        url = self.files.signed_get_url(effect.file_id, self.url_ttl, key)
        kind = resources.GetDownloadTaskRsp if effect.answer else resources.DownloadTask
        task = kind(effect.size, effect.name, effect.md5, url)
        self.runtime.publish("resource_download", key, task, 0)

    def _resource_delivered(self, key: DeviceKey, effect: resources.ResourceDelivered) -> None:
        with self._records:
            self._record_delivery(key, effect)

    def _record_delivery(self, key: DeviceKey, effect: resources.ResourceDelivered) -> None:
        for record_key, doc in self.store.items("deliveries"):
            same = (doc["product"], doc["device"], doc["name"]) == (*key, effect.name)
            if same and doc["state"] == "queued":
                state = "done" if effect.ok else "fail"
                doc.update(state=state, code=effect.code, message=effect.message)
                self.store.put("deliveries", record_key, doc)
                break

    # ---- log level --------------------------------------------------------------------------

    def set_log_level(self, product_id: str, device_name: str, level: int) -> None:
        """Set a device's log level and push it now; an offline device gets it when it asks."""
        if level not in LEVELS:
            raise ValueError(f"log level {level!r} must be 0 (nothing) to 4 (debug)")
        key = self._device(product_id, device_name)
        self.runtime.post("log_level", key, SetLogLevel(level))

    def set_product_log_level(self, product_id: str, level: int) -> None:
        """Set the level of every device of a product, including devices first seen later."""
        if level not in LEVELS:
            raise ValueError(f"log level {level!r} must be 0 (nothing) to 4 (debug)")
        check_key(DeviceKey(product_id, "x"))
        self.store.put("product_log_level", product_id, level)
        known = {s.key for _, s in self.runtime.all_sessions() if s.key.product == product_id}
        for key in sorted(known):
            self.runtime.post("log_level", key, SetLogLevel(level))

    def log_level(self, product_id: str, device_name: str) -> int:
        """The level this platform answers the device with (0 until set)."""
        key = self._device(product_id, device_name)
        level: int = self.runtime.session("log_level", key).ctx.level
        return level

    # ---- remote config ----------------------------------------------------------------------

    def set_config(self, product_id: str, payload: dict[str, Any]) -> ConfigVersion:
        """Make `payload` (a JSON object) the product's config: a new version (the last five are
        kept) pushed now to every device of the product this platform knows; a device offline
        now gets it when it next connects and asks. While config is disabled it is only stored.
        Raises ConfigError for a payload devices could not be sent."""
        check_key(DeviceKey(product_id, "x"))
        version, current = self.configs.set(product_id, payload, self.runtime.clock.now())
        self._tell_product(product_id, ConfigChanged(current))
        return version

    def enable_config(self, product_id: str, enabled: bool) -> None:
        """Switch remote config on or off for a product (on by default). Off: devices are
        answered 1001 and keep what they have; back on: the current config is pushed again."""
        check_key(DeviceKey(product_id, "x"))
        current = self.configs.enable(product_id, enabled)
        if current is not None:
            self._tell_product(product_id, ConfigChanged(current))

    def push_config(self, product_id: str, device_name: str) -> None:
        """Push the product's current config to one device now."""
        key = self._device(product_id, device_name)
        current = self.configs.current(product_id)
        if not current.enabled:
            raise ConfigError(f"remote config is disabled for {product_id}; enable_config first")
        if current.payload is None:
            raise ConfigError(f"product {product_id} has no config yet; set_config first")
        self.runtime.post("config", key, ConfigLoaded(current))
        self.runtime.post("config", key, PushConfig())

    def config_history(self, product_id: str) -> tuple[ConfigVersion, ...]:
        """The product's last five config versions, oldest first (the current one last)."""
        return self.configs.history(check_key(DeviceKey(product_id, "x")).product)

    def product_config(self, product_id: str) -> ProductConfig:
        """What devices of the product are answered: enabled, current version and payload."""
        return self.configs.current(check_key(DeviceKey(product_id, "x")).product)

    def _tell_product(self, product_id: str, event: Event) -> None:
        keys: set[DeviceKey] = set()
        for sessions in self.runtime.sessions.values():
            # list() copies the keys in one go: the runtime may add sessions meanwhile
            keys.update(k for k in list(sessions) if k.product == product_id)
        for key in sorted(keys):
            self.runtime.post("config", key, event)

    def _load_config(self, key: DeviceKey, effect: LoadProductConfig) -> None:
        self.runtime.post("config", key, ConfigLoaded(self.configs.current(key.product)))

    # ---- device logs ------------------------------------------------------------------------

    def register_device(
        self, product_id: str, device_name: str, psk: str | None = None, auth: str = "key"
    ) -> RegisteredDevice:
        """Let a device in: it gets sessions and answers from now on. A key device's key is
        derived from its product's secret (`registry.device_psk` tells it) unless `psk`
        imports one issued elsewhere; registering a known device again with a `psk` replaces
        its imported key. Raises RegistryError with what to fix."""
        if auth not in ("key", "cert"):
            raise RegistryError(f"auth {auth!r} must be 'key' or 'cert'")
        known = self.registry.get(product_id, device_name)
        if known is None:
            kind: AuthKind = "cert" if auth == "cert" else "key"
            return self.registry.add(product_id, device_name, kind, psk)
        if psk is not None:
            self.registry.secrets.set_imported(product_id, device_name, psk)
        return known

    def _device(self, product_id: str, device_name: str) -> DeviceKey:
        """The key of a device that operator calls may address: registered, or any name under
        an open registry. An unknown name is a typo or an attack, never a new session."""
        key = check_key(DeviceKey(product_id, device_name))
        if not self.registry.open and self.registry.get(*key) is None:
            raise RegistryError(
                f"{product_id}/{device_name} is not registered; register_device first "
                "(iotfsm registry add)"
            )
        return key

    def _restorable(self, key: DeviceKey) -> bool:
        return self.registry.open or self.registry.get(*key) is not None

    def _registry_changed(self, device: RegisteredDevice, present: bool) -> None:
        if not present:
            self.runtime.forget(device.key)

    @property
    def log_url(self) -> str:
        """Where devices upload their log (`log_upload=` of `Device`); valid once started."""
        return f"{self.files.public_base}{REPORT_LOG_PATH}"

    def device_logs(self, product_id: str, device_name: str, since: int = 0) -> list[LogLine]:
        """The device's uploaded lines kept so far (the newest 500), those after `since`."""
        return self.logs.lines(product_id, device_name, since)

    def follow_logs(
        self, callback: LogFollower, product_id: str | None = None, device_name: str | None = None
    ) -> Callable[[], None]:
        """Call `callback(line)` for every line uploaded from now on (of one product or device
        if given), on an HTTP server thread. Returns a function that stops it."""
        return self.logs.follow(callback, product_id, device_name)

    # ---- status -----------------------------------------------------------------------------

    def status(self) -> list[SessionStatus]:
        """Every known session, by feature, product and device."""
        return sorted(
            SessionStatus(feature, s.key.product, s.key.device, s.state)
            for feature, s in self.runtime.all_sessions()
        )
