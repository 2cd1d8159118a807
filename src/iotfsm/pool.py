"""`PoolPlatform`: one worker of a platform pool on RabbitMQ and PostgreSQL.

It is a `Platform` like any other (the same declarations, handlers, file service and registry)
whose transport is a `PoolWorker` (adapters/amqp/worker.py) and whose store, blobs and secrets are
shared through PostgreSQL:

- sessions: loaded per partition when the worker takes the partition over, never all at start
  (`PoolStore.load` is empty); committed per batch by the worker, not per step;
- files: in PostgreSQL (`PostgresBlobs`), and the URL-signing secret is one for the pool (a record
  read at start), so a URL one worker signed is served by any worker;
- work that must happen once per pool (campaigns, product-wide tasks queued with `queue_deploy`,
  campaign outcomes) runs only in the leader, elected with an advisory lock; it reaches devices
  through their partitions like every post from outside a worker's loop;
- OTA outcomes are recorded in the shared store (table `ota_outcomes`) in the transaction of the
  step that ended the task, so a redelivered report never records one twice; the leader hands
  those of other workers to its campaign runner.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from .adapters.amqp.commands import CommandCodec, command_key, new_secret
from .adapters.amqp.topology import QueueType
from .adapters.amqp.worker import PoolSettings, PoolWorker
from .adapters.identity.broker_account import BrokerAccount
from .adapters.store.postgres import PostgresStore
from .adapters.store.postgres_blobs import PostgresBlobs
from .fsm.clock import Clock
from .fsm.trace import Tracer
from .machines import DeviceKey, ota
from .platform import Deployment, OtaHook, Platform

log = logging.getLogger(__name__)

SETTINGS = ("pool", "settings")
TASKS = "pool_tasks"
OUTCOMES = "ota_outcomes"
LOST_STARTS_AFTER = 5.0
"""Seconds a new leader waits before it sends again the campaign starts its predecessor committed
but never sent: starts that were on their way are stepped and committed by their owners by then,
and are not sent twice."""


class PoolStore:
    """The `SessionStore` a pool worker's runtime sees: its `PostgresStore` with `commit` left
    to the worker (once per batch, before the acks) and no bulk `load` (partitions load theirs)."""

    def __init__(self, inner: PostgresStore) -> None:
        self.inner = inner

    def load(self) -> Iterator[tuple[str, DeviceKey, dict[str, Any]]]:
        return iter(())

    def save(self, feature: str, key: DeviceKey, doc: dict[str, Any]) -> None:
        self.inner.save(feature, key, doc)

    def commit(self) -> None:
        """The worker commits each batch before it acks; a commit per post would not be
        tied to a delivery."""

    def delete_session(self, feature: str, key: DeviceKey) -> None:
        self.inner.delete_session(feature, key)

    def put(self, table: str, key: str, value: Any) -> None:
        self.inner.put(table, key, value)

    def get(self, table: str, key: str) -> Any | None:
        return self.inner.get(table, key)

    def items(self, table: str) -> list[tuple[str, Any]]:
        return self.inner.items(table)

    def delete(self, table: str, key: str) -> None:
        self.inner.delete(table, key)

    def data_version(self) -> int:
        return self.inner.data_version()

    def close(self) -> None:
        self.inner.close()


@attrs.frozen
class Outcome:
    """One OTA task's end as the pool recorded it."""

    product: str
    device: str
    version: str
    ok: bool
    code: int
    message: str
    worker: int
    relayed: bool


def pool_settings(store: PostgresStore, partitions: int, queue_type: QueueType) -> dict[str, Any]:
    """The pool-wide settings: the first worker's values, whatever later ones ask for (a
    different partition count would re-hash every device)."""
    doc = store.setdefault(
        *SETTINGS,
        {
            "partitions": partitions,
            "queue_type": queue_type,
            "url_secret": new_secret(),
            "command_key": new_secret(),
        },
    )
    if not isinstance(doc, dict):
        raise ValueError("the pool settings in the store are malformed")
    if doc["partitions"] != partitions or doc["queue_type"] != queue_type:
        log.warning(
            "the pool has %s %s partitions; this worker follows (asked for %s %s)",
            doc["partitions"],
            doc["queue_type"],
            partitions,
            queue_type,
        )
    return doc


def queue_deploy(store: PostgresStore, product: str, version: str, image: bytes) -> str:
    """Queue a product-wide firmware deployment for the pool's leader (from any process: an
    operator's command, a test). The image goes into the shared blobs now."""
    problem = ota.version_problem(version)
    if problem is not None:
        raise ValueError(f"version {version[:40]!r} is refused: {problem}")
    import hashlib

    ref = PostgresBlobs(store).put(f"fw-{hashlib.md5(image).hexdigest()}", image)
    task = f"t-{secrets.token_hex(6)}"
    store.put(
        TASKS,
        task,
        {"action": "deploy", "product": product, "version": version, "file_id": ref.file_id},
    )
    return task


def outcomes(store: PostgresStore) -> list[Outcome]:
    return [Outcome(**doc) for _, doc in store.items(OUTCOMES)]


class PoolPlatform:
    def __init__(
        self,
        broker: str,
        dsn: str,
        *,
        data_dir: str | Path,
        login: BrokerAccount | None = None,
        http_host: str = "127.0.0.1",
        http_port: int = 0,
        public_base: str | None = None,
        partitions: int = 16,
        queue_type: QueueType = "quorum",
        prefetch: int = 200,
        open_registry: bool = False,
        secrets_dir: str | Path | None = None,
        broker_auth: tuple[str, int] | None = None,
        on_step: Tracer | None = None,
        on_ota_finished: OtaHook | None = None,
        clock: Clock | None = None,
        max_upload: int | None = None,
    ) -> None:
        """`broker` is `amqp://HOST:PORT/VHOST` without a password; `login` is the platform's
        broker account (RabbitMQ asks the platform's broker-auth listener about it)."""
        self.store = PostgresStore(dsn)
        try:
            shared = pool_settings(self.store, partitions, queue_type)
            data = Path(data_dir)
            data.mkdir(parents=True, exist_ok=True)
            _write_secret(data / "url-secret", bytes.fromhex(str(shared["url_secret"])))
            settings = PoolSettings(
                broker,
                login.username if login else None,
                login.password if login else None,
                partitions=int(shared["partitions"]),
                queue_type=shared["queue_type"],
                prefetch=prefetch,
            )
            codec = CommandCodec(command_key(shared["command_key"]))
            self.worker = PoolWorker(
                settings, self.store, dsn, codec, clock=clock, on_leader=self._leading
            )
            self._user_hook = on_ota_finished
            self.platform = Platform(
                self.worker,
                data_dir=data,
                http_host=http_host,
                http_port=http_port,
                public_base=public_base,
                store=PoolStore(self.store),
                blobs=PostgresBlobs(self.store),
                on_step=on_step,
                on_ota_finished=self._ota_finished,
                clock=clock,
                open_registry=open_registry,
                secrets_dir=secrets_dir,
                broker_auth=broker_auth,
                broker_account=login,
                max_upload=max_upload,
            )
        except BaseException:
            self.store.close()
            raise
        self.worker.bind(self.platform.runtime)
        self._leader = threading.Event()

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> PoolPlatform:
        platform = self.platform
        platform.files.start()
        if platform.broker_auth is not None:
            platform.broker_auth.start()
        platform.runtime.start()
        return self

    def stop(self) -> None:
        platform = self.platform
        platform.campaigns.stop()
        platform.runtime.stop()
        if platform.broker_auth is not None:
            platform.broker_auth.stop()
        platform.files.stop()
        self.store.close()

    def __enter__(self) -> PoolPlatform:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def leader(self) -> bool:
        return self._leader.is_set()

    def _leading(self, leading: bool) -> None:
        """On the worker's loop: start or stop what runs once per pool."""
        if leading:
            self._leader.set()
            self.platform.campaigns.start()
            log.info("worker %d leads the pool", self.worker.leases.member)
            runtime = self.platform.runtime
            runtime.scheduler.call_at(runtime.clock.now() + LOST_STARTS_AFTER, self._lost_starts)
        else:
            self._leader.clear()
            self.platform.campaigns.stop()

    def poll(self) -> list[str]:
        """The leader's periodic work (the command loop calls it every second): operator
        campaign commands, queued pool tasks, other workers' OTA outcomes for campaigns.
        Followers return at once. Returns what was done, a line each."""
        if not self.leader:
            return []
        lines = self.platform.campaigns.apply_commands()
        lines += self._run_tasks()
        self._relay_outcomes()
        return lines

    def _lost_starts(self) -> None:
        """On the worker's loop, a while after taking the lead (`LOST_STARTS_AFTER`)."""
        if self.leader:
            lost = self.platform.campaigns.start_lost(self._start_reached)
            if lost:
                log.warning(
                    "%d campaign starts were committed by the previous leader but never sent: "
                    "sent again (%s)",
                    len(lost),
                    ", ".join(f"{k.product}/{k.device}" for k in lost[:10]),
                )

    def _start_reached(self, key: DeviceKey, version: str) -> bool:
        """Whether the device's OTA machine holds a task for `version`: this worker's session
        if it steps the device (its last batch may not be committed yet), else the committed one."""
        local = self.platform.runtime.sessions["ota"].get(key)
        if local is not None:
            return bool(local.ctx.target == version)
        docs = self.store.device_sessions(key, ("ota",))
        return any(
            isinstance(doc, dict) and doc.get("context", {}).get("target") == version
            for _, doc in docs
        )

    # ---- product-wide work ------------------------------------------------------------------

    def deploy_firmware(
        self,
        product_id: str,
        devices: Sequence[str] | Literal["*"],
        version: str,
        image: str | Path | bytes,
    ) -> Deployment:
        """`Platform.deploy_firmware` for the pool: for "*" every device with a session in
        the shared store gets the command (through its partition), not only this worker's."""
        deployment = self.platform.deploy_firmware(product_id, devices, version, image)
        if devices == "*":
            local = {s.key for _, s in self.platform.runtime.all_sessions()}
            command = ota.DeployFirmware(
                version, deployment.file_id, deployment.size, deployment.md5
            )
            for key in self.store.session_keys("ota", product_id):
                if key not in local:
                    self.platform.runtime.post("ota", key, command)
        return deployment

    def _run_tasks(self) -> list[str]:
        lines = []
        for task, doc in self.store.items(TASKS):
            self.store.delete(TASKS, task)  # committed before it runs: at most once
            if not isinstance(doc, dict) or doc.get("action") != "deploy":
                lines.append(f"pool task {task} refused: unknown action")
                continue
            found = self.platform.files.blobs.open(str(doc.get("file_id", "")))
            if found is None:
                lines.append(f"pool task {task} refused: image {doc.get('file_id')} is gone")
                continue
            handle, _ = found
            with handle:
                image = handle.read()
            try:
                self.deploy_firmware(str(doc["product"]), "*", str(doc["version"]), image)
            except (ValueError, KeyError) as exc:
                lines.append(f"pool task {task} refused: {exc}")
                continue
            lines.append(f"deployed {doc['version']} to every device of {doc['product']}")
        return lines

    # ---- OTA outcomes -----------------------------------------------------------------------

    def _ota_finished(self, key: DeviceKey, effect: ota.OtaFinished) -> None:
        """In the step that ended the task (on the owner's loop): one record, written with the
        batch's snapshots and uplink marks in one transaction."""
        outcome = Outcome(
            key.product,
            key.device,
            effect.version,
            effect.ok,
            effect.code,
            effect.message,
            self.worker.leases.member,
            relayed=self.leader,  # the leader's own runner heard it in-process already
        )
        record = f"{key.product}/{key.device}/{effect.version}/{secrets.token_hex(4)}"
        self.store.stage(OUTCOMES, record, attrs.asdict(outcome))
        if self._user_hook is not None:
            self._user_hook(key, effect)

    def _relay_outcomes(self) -> None:
        """Other workers' outcomes to the campaign runner, each marked relayed only after the
        runner heard it (and committed what it made of it): a leader killed in between leaves
        it to the next one, whose runner ignores an outcome of a device no longer running.
        Marked first, it would be lost, and the campaign would wait for that device forever."""
        for record, doc in self.store.items(OUTCOMES):
            if not isinstance(doc, dict) or doc.get("relayed", True):
                continue
            outcome = Outcome(**doc)
            effect = ota.OtaFinished(outcome.ok, outcome.version, outcome.code, outcome.message)
            self.platform.campaigns.ota_finished(DeviceKey(outcome.product, outcome.device), effect)
            self.store.put(OUTCOMES, record, {**doc, "relayed": True})


def _write_secret(path: Path, secret: bytes) -> None:
    if path.exists() and path.read_bytes() == secret:
        return
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(secret)
