"""`Device`: the device role of every feature, as an application embeds it.

The application gives an identity, a way to the broker and a state directory, plus hooks for what
only it can do: burn a firmware image, and the logger whose level the platform controls.
Everything else (asking, retrying, downloading with breakpoint resume, reporting) is the declared
machines' job; the application observes steps if it wants.

State directory layout: `ota/firmware` (+ `.part`, `.checkpoint.json`) while downloading,
`ota/version.json` for the version adopted after a successful burn, `ota/firmware-<v>.bin` for
images kept by the default burn step, `config/config.json` for the last applied remote config.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._role import RoleFacade
from .adapters.connect import Broker, MqttOptions, transport_for
from .adapters.durable import fsync_dir, read_json, write_json_atomic
from .adapters.http.log_upload import LogUploader, LogUploadOptions
from .adapters.http.transfer import file_md5
from .adapters.http.url_policy import UrlPolicy
from .adapters.identity.firmware_signing import FirmwareVerifier, PublicKeySource
from .adapters.runtime import Runtime
from .adapters.topics import check_key
from .adapters.transfer_runner import TransferRunner
from .device_messaging import BroadcastHook, DeviceMessaging, RrpcHook, ShadowDeltaHook
from .fsm.clock import Clock
from .fsm.events import Event
from .fsm.trace import Tracer
from .machines import DeviceKey, all_features, ota, resources
from .machines.config import (
    ApplyConfig,
    ConfigNotSaved,
    ConfigSaved,
    ConfigStatus,
    RequestConfig,
    SaveConfig,
)
from .machines.config import DeviceContext as ConfigContext
from .machines.log_level import ApplyLogLevel, python_level
from .machines.names import check_name
from .machines.transfer import CancelTransfer, StartDownload, StartUpload

log = logging.getLogger(__name__)

ResourceHook = Callable[[Path, str], None]
"""`on_resource(path, name)`: a delivered resource, verified, at its final place."""
UploadHook = Callable[[str, bool, int, str], None]
"""`on_upload_finished(name, ok, code, message)`."""
BurnHook = Callable[[Path, str], None]
"""`burn(image, version)`: install the verified image; raise to report failure (fail -5)."""
ConfigHook = Callable[[dict[str, Any]], None]
"""`on_config(payload)`: run with this remote config now (called once per change)."""


class Device(RoleFacade, DeviceMessaging):
    def __init__(
        self,
        product_id: str,
        device_name: str,
        psk: str | None = None,
        *,
        broker: Broker,
        state_dir: str | Path,
        version: str = "0.0.0",
        burn: BurnHook | None = None,
        logger: logging.Logger | None = None,
        on_log_level: Callable[[int], None] | None = None,
        on_step: Tracer | None = None,
        clock: Clock | None = None,
        mqtt: MqttOptions | None = None,
        chunk_size: int = 64 * 1024,
        http_timeout: float = 30.0,
        on_resource: ResourceHook | None = None,
        on_upload_finished: UploadHook | None = None,
        on_config: ConfigHook | None = None,
        log_upload: str | LogUploadOptions | None = None,
        firmware_public_key: PublicKeySource | None = None,
        trusted_url_bases: Sequence[str] = (),
        on_broadcast: BroadcastHook | None = None,
        on_shadow_delta: ShadowDeltaHook | None = None,
        on_rrpc: RrpcHook | None = None,
    ) -> None:
        """`version` is the firmware the application runs (a version adopted by an earlier
        burn, remembered in the state directory, takes its place). `burn` installs an image;
        without it the image is kept in the state directory and its version adopted.
        `logger` follows the platform's log level (0 silences it, 1 ERROR ... 4 DEBUG).
        `psk` is the device key, needed on a real broker, unused on the memory broker.
        `broker` is a MemoryBroker, a Transport, or a URL (`mqtt://host:1883`, `mqtts://…`)
        with `mqtt` options for TLS and reconnect pacing. `on_resource(path, name)` receives each
        delivered resource (kept under `<state dir>/resources/files/`); `on_upload_finished(name,
        ok, code, message)` hears how each `upload()` ended. `on_config(payload)` applies each
        new remote config (the last one is kept in the state directory: `config` knows it before
        the device is online). `log_upload` (the platform's `log_url`, or options) uploads the
        records of `logger` (the root logger if none) at the platform's log level; it needs
        `psk` to sign.

        `firmware_public_key` (the platform's `firmware.pub`: a path, PEM bytes or a key) makes
        the device install only images signed for it: an unsigned or wrongly signed image is
        deleted before `burn` and reported as fail -4. `trusted_url_bases` (e.g.
        `["https://fw.example.com/files/"]`) limits every download and upload to URLs under
        them; link-local addresses are refused with or without them. ValueError (a
        FirmwareKeyError for the key) when either cannot be used. `on_broadcast(payload)`
        receives each broadcast of the product (bytes as the server sent them);
        `on_shadow_delta(delta)` applies the shadow's desired values, and what it returns is
        reported (`report(state)` reports at any time). `on_rrpc(payload, process_id)`
        answers the platform's RRPC calls: it returns the answer, or None and answers later
        with `answer_rrpc(process_id, answer)`."""
        self.key = check_key(DeviceKey(product_id, device_name))
        self.state_dir = Path(state_dir)
        self._ota_dir = self.state_dir / "ota"
        self._ota_dir.mkdir(parents=True, exist_ok=True)
        self.logger = logger
        self._on_log_level = on_log_level
        self._burn = burn
        self._verifier = (
            FirmwareVerifier(firmware_public_key) if firmware_public_key is not None else None
        )
        self.url_policy = UrlPolicy(trusted_url_bases)
        """Which URLs this device fetches from and uploads to."""
        self.log_level: int | None = None
        """The level last applied from the platform; None until it has answered."""
        check = self.url_policy.check
        self.transfers = TransferRunner(
            self._ota_dir, chunk_size=chunk_size, timeout=http_timeout, url_check=check
        )
        self.resources_dir = self.state_dir / "resources" / "files"
        self._resource_transfers = TransferRunner(
            self.state_dir / "resources" / "incoming",
            chunk_size=chunk_size,
            timeout=http_timeout,
            url_check=check,
        )
        self._on_resource = on_resource
        self._burning: threading.Thread | None = None
        """The thread verifying or burning an image, if any."""
        self._on_upload_finished = on_upload_finished
        self._on_broadcast = on_broadcast
        self._on_shadow_delta = on_shadow_delta
        self._on_rrpc = on_rrpc
        self._on_config = on_config
        self._config_file = self.state_dir / "config" / "config.json"
        if log_upload is not None and not psk:
            raise ValueError("log_upload needs the device key (psk) to sign the uploads")
        self.log_uploader: LogUploader | None = None
        """Uploads the application's log at the platform's level, when `log_upload` was given."""
        self.runtime = Runtime(
            "device",
            transport_for(broker, self.key, psk, mqtt),
            all_features(),
            identity=self.key,
            clock=clock,
            handlers={
                ApplyLogLevel: self._apply_log_level,
                ("ota", StartDownload): self._start_download,
                ("ota", CancelTransfer): self._cancel_transfer,
                ota.VerifyFirmware: self._verify_firmware,
                ota.BurnFirmware: self._burn_firmware,
                ota.FirmwareAdopted: self._adopt_version,
                ("resource_download", StartDownload): self._start_resource_download,
                ("resource_download", CancelTransfer): self._cancel_resource_transfer,
                ("resource_upload", StartUpload): self._start_upload,
                ("resource_upload", CancelTransfer): self._cancel_resource_transfer,
                resources.DeliverResource: self._deliver_resource,
                resources.UploadFinished: self._upload_finished,
                ApplyConfig: self._apply_config,
                SaveConfig: self._save_config,
                **self._messaging_handlers(),
            },
            tracer=on_step,
        )
        running = self._adopted_version(version)
        machine = self.runtime.machines["ota"]
        signed_only = self._verifier is not None
        context = ota.DeviceContext(version=running, signed_only=signed_only)
        self.runtime.adopt("ota", machine.new_session(self.key, context))
        saved = read_json(self._config_file)
        known = saved.get("payload") if isinstance(saved, dict) else None
        config = ConfigContext(config=known if isinstance(known, dict) else None)
        self.runtime.adopt("config", self.runtime.machines["config"].new_session(self.key, config))
        if log_upload is not None and psk:
            self.log_uploader = LogUploader(
                log_upload, product_id, device_name, psk, now=self.runtime.clock.now
            )
            (logger or logging.getLogger()).addHandler(self.log_uploader)

    def stop(self) -> None:
        super().stop()
        self.transfers.stop()
        self._resource_transfers.stop()
        if self.log_uploader is not None:
            (self.logger or logging.getLogger()).removeHandler(self.log_uploader)
            self.log_uploader.close()

    # ---- calls the application makes --------------------------------------------------------

    def upload(self, path: str | Path, name: str) -> None:
        """Queue `path` for upload as resource `name`; uploads run one at a time, in order.

        Raises ValueError for a name the platform could not accept and FileNotFoundError for
        a missing file; how it ends comes to `on_upload_finished`."""
        check_name(name, "resource name")
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"cannot upload {source}: no such file")
        size = source.stat().st_size
        if size == 0:
            raise ValueError(f"cannot upload {source}: it is empty")
        md5 = file_md5(source)
        job = resources.Upload(name, str(source), size, md5)
        self.runtime.post("resource_upload", self.key, job)

    def request_config(self) -> None:
        """Ask the platform for the config now (one ask is out at a time; offline, the device
        asks when it connects). `on_config` hears of it only if the config changed."""
        self.runtime.post("config", self.key, RequestConfig())

    # ---- what the application reads --------------------------------------------------------

    @property
    def config(self) -> dict[str, Any] | None:
        """The remote config last applied (a copy), known from the state directory at start;
        None if the platform never sent one."""
        context: ConfigContext = self.runtime.session("config", self.key).ctx
        return copy.deepcopy(context.config)

    @property
    def config_status(self) -> ConfigStatus:
        """The platform's last answer about the config and why the config is what it is (e.g.
        result 1001: remote config is disabled, the device keeps its current config)."""
        context: ConfigContext = self.runtime.session("config", self.key).ctx
        return ConfigStatus(context.result, context.note)

    def state(self, feature: str) -> str:
        """The current state of this device's machine for `feature` (e.g. "ota")."""
        if feature not in self.runtime.sessions:
            raise KeyError(f"unknown feature {feature!r}; known: {sorted(self.runtime.sessions)}")
        return self.runtime.session(feature, self.key).state

    @property
    def version(self) -> str:
        """The firmware version this device reports."""
        context: ota.DeviceContext = self.runtime.session("ota", self.key).ctx
        return context.version

    @property
    def connected(self) -> bool:
        return self.runtime.transport.connected

    @property
    def busy(self) -> bool:
        """Whether a transfer or a burn is running on a thread (their outcome is still to come)."""
        burning = self._burning is not None and self._burning.is_alive()
        return burning or self.transfers.busy or self._resource_transfers.busy

    # ---- effect handlers --------------------------------------------------------------------

    def _post(self, feature: str) -> Callable[[Event], None]:
        def post(event: Event) -> None:
            self.runtime.post(feature, self.key, event)

        return post

    def _apply_log_level(self, key: DeviceKey, effect: ApplyLogLevel) -> None:
        self.log_level = effect.level
        if self.logger is not None:
            self.logger.setLevel(python_level(effect.level))
        if self.log_uploader is not None:
            self.log_uploader.set_remote_level(effect.level)
        if self._on_log_level is not None:
            self._on_log_level(effect.level)

    def _apply_config(self, key: DeviceKey, effect: ApplyConfig) -> None:
        if self._on_config is not None:
            self._on_config(copy.deepcopy(effect.payload))

    def _save_config(self, key: DeviceKey, effect: SaveConfig) -> None:
        """Save, then let the machine apply: never a config applied in memory but lost on
        reboot (a full state directory refuses the write; the config is then not applied)."""
        try:
            write_json_atomic(self._config_file, {"payload": effect.payload})
        except OSError as exc:
            reason = f"{self._config_file}: {exc.strerror or exc}"
            self.runtime.post("config", key, ConfigNotSaved(effect.payload, reason))
        else:
            self.runtime.post("config", key, ConfigSaved(effect.payload))

    def _start_download(self, key: DeviceKey, effect: StartDownload) -> None:
        self.transfers.start_download(effect, self._post("ota"))

    def _cancel_transfer(self, key: DeviceKey, effect: CancelTransfer) -> None:
        self.transfers.cancel(effect)

    def _start_resource_download(self, key: DeviceKey, effect: StartDownload) -> None:
        self._resource_transfers.start_download(effect, self._post("resource_download"))

    def _start_upload(self, key: DeviceKey, effect: StartUpload) -> None:
        self._resource_transfers.start_upload(effect, self._post("resource_upload"))

    def _cancel_resource_transfer(self, key: DeviceKey, effect: CancelTransfer) -> None:
        self._resource_transfers.cancel(effect)

    def _deliver_resource(self, key: DeviceKey, effect: resources.DeliverResource) -> None:
        """Move the verified file to its place (same file system: an atomic rename)."""
        target = self.resources_dir / check_name(effect.name, "resource name")
        self.resources_dir.mkdir(parents=True, exist_ok=True)
        os.replace(effect.path, target)
        fsync_dir(self.resources_dir)
        if self._on_resource is not None:
            self._on_resource(target, effect.name)

    def _upload_finished(self, key: DeviceKey, effect: resources.UploadFinished) -> None:
        if self._on_upload_finished is not None:
            self._on_upload_finished(effect.name, effect.ok, effect.code, effect.message)

    def _verify_firmware(self, key: DeviceKey, effect: ota.VerifyFirmware) -> None:
        """Hash and check the image on a thread (it may be large); a rejected one is deleted
        before the machine hears of it, so nothing can install it afterwards."""
        post = self._post("ota")
        verifier = self._verifier

        def verify() -> None:
            image = Path(effect.path)
            try:
                problem = (
                    "the device has no public key to verify with"
                    if verifier is None
                    else verifier.problem(
                        image, key.product, effect.version, effect.sha256, effect.signature
                    )
                )
            except OSError as exc:
                problem = f"cannot read the image: {exc.strerror or exc}"
            except Exception as exc:  # any failure must end in a rejection, never a stuck state
                problem = f"verification failed: {type(exc).__name__}: {exc}"
            if problem is None:
                post(ota.FirmwareVerified(effect.path))
                return
            image.unlink(missing_ok=True)
            post(ota.FirmwareRejected(problem))

        thread = threading.Thread(target=verify, name="iotfsm-verify", daemon=True)
        self._burning = thread
        thread.start()

    def _burn_firmware(self, key: DeviceKey, effect: ota.BurnFirmware) -> None:
        post = self._post("ota")

        def burn() -> None:
            try:
                (self._burn or self._keep_image)(Path(effect.path), effect.version)
            except Exception as exc:
                log.warning("burning %s failed: %s", effect.version, exc)
                post(ota.BurnDone(False, str(exc) or type(exc).__name__))
            else:
                post(ota.BurnDone(True))

        thread = threading.Thread(target=burn, name="iotfsm-burn", daemon=True)
        self._burning = thread
        thread.start()

    def _keep_image(self, image: Path, version: str) -> None:
        """The default burn step: keep the verified image in the state directory (the machine
        took only a version that is a valid name; checked again as it becomes a file name)."""
        target = self._ota_dir / f"firmware-{check_name(version, 'firmware version')}.bin"
        shutil.move(image, target)
        fsync_dir(self._ota_dir)

    def _version_file(self) -> Path:
        return self._ota_dir / "version.json"

    def _adopted_version(self, given: str) -> str:
        """The version adopted by an earlier burn, or `given` when there was none. A damaged
        file falls back to `given` too, but says so: the device may then report a version it
        no longer runs, and the platform would offer (or not offer) the wrong firmware."""
        path = self._version_file()
        try:
            doc: Any = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return given
        except (OSError, ValueError) as exc:
            problem = f"unreadable ({exc})"
        else:
            version = doc.get("version") if isinstance(doc, dict) else None
            if isinstance(version, str) and 1 <= len(version) <= 32:
                return version
            problem = 'not a {"version": "1-32 characters"} document'
        log.warning(
            "%s is %s: reporting version %r, the one given at start (--version); if the device"
            " runs another, fix or remove the file",
            path,
            problem,
            given,
        )
        return given

    def _adopt_version(self, key: DeviceKey, effect: ota.FirmwareAdopted) -> None:
        path = self._version_file()
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"version": effect.version}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(self._ota_dir)

    def __repr__(self) -> str:
        return f"<Device {self.key.product}/{self.key.device}>"
