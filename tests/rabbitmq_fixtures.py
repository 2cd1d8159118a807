"""A private RabbitMQ node for the whole test session: import `rabbitmq_node` from a test module.

A node boots in 10-20 s, so one is shared by every test of a session. Its HTTP auth backend points
at a port reserved here (`auth_address`): each test starts its own platform's broker-auth listener
on that port and stops it at the end, so tests never see each other's registry. A missing
`rabbitmq-server` fails these tests with the install command instead of skipping them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import pytest
from server_warmup import Warmup

from iotfsm.adapters.mqtt.transport import MqttSettings
from iotfsm.testing.rabbitmq import RabbitMQ, RabbitMQNotFoundError
from iotfsm.testing.server import free_port


@attrs.frozen
class RabbitNode:
    broker: RabbitMQ
    auth_address: tuple[str, int]
    """Where the node's auth backend sends its questions: bind a BrokerAuthServer here."""

    def settings(self, client_id: str, **overrides: Any) -> MqttSettings:
        """Settings for the node's MQTT listener with fast reconnects, as tests want them."""
        values: dict[str, Any] = {
            "host": self.broker.host,
            "port": self.broker.port,
            "client_id": client_id,
            "backoff_min": 0.05,
            "backoff_max": 0.5,
            "backoff_jitter": 0.5,
            "connect_timeout": 5.0,
        }
        values.update(overrides)
        return MqttSettings(**values)

    def reset_vhost(self, vhost: str = "/") -> None:
        """Delete `vhost` with all it holds and create it empty again: the exchanges, queues,
        bindings and messages an earlier test left (a pool's partition queues and hash bindings
        above all) must not route or hold anything of the next one. Its connections close."""
        for args in (("delete_vhost", vhost), ("add_vhost", vhost)):
            done = self.broker.ctl(*args)
            if done.returncode != 0 and not (
                args[0] == "delete_vhost" and "not_found" in done.stderr + done.stdout
            ):
                raise AssertionError(
                    f"rabbitmqctl {' '.join(args)} failed: {done.stderr or done.stdout}"
                )

    def mqtt_connections(self, client_ids: Sequence[str]) -> str:
        """What the node holds for the MQTT connections of `client_ids`, for a failure message:
        each one's reader state, its two channels (QoS 0 and QoS 1 publishes each go through
        one; 3.10 opens the QoS 1 one at the first QoS 1 publish) and whether they are alive,
        the QoS 1 publishes waiting for a confirm, and the reader process's mailbox."""
        wanted = ",".join(f'<<"{c}">>' for c in client_ids if c.isalnum())
        expression = (
            f"Ids = [{wanted}], "
            "Alive = fun(undefined) -> none; (Pid) -> is_process_alive(Pid) end, "
            "[begin "
            "  I = rabbit_mqtt_reader:info(P, [conn_name, connection_state, channels,"
            "    unacked_pubs, awaiting_seqno, awaiting_ack, message_id]), "
            "  {channels, {C0, C1}} = lists:keyfind(channels, 1, I), "
            "  {unacked_pubs, U} = lists:keyfind(unacked_pubs, 1, I), "
            "  {rabbit_data_coercion:to_binary(Id), "
            "   lists:keydelete(unacked_pubs, 1, I), {unacked_pubs, gb_trees:to_list(U)}, "
            "   {qos0_channel_alive, Alive(C0)}, {qos1_channel_alive, Alive(C1)}, "
            "   erlang:process_info(P, [message_queue_len, current_function, status])} "
            "end || {Id, P} <- rabbit_mqtt_collector:list(), "
            "lists:member(rabbit_data_coercion:to_binary(Id), Ids)]."
        )
        found = self.broker.ctl("eval", expression)
        return (found.stdout + found.stderr).strip()

    def log_lines(self, needles: Sequence[str], most: int = 80) -> str:
        """The node's log lines naming one of `needles` (a client id, a username)."""
        lines = [line for line in self.broker.log_text().splitlines()
                 if any(needle in line for needle in needles)]  # fmt: skip
        return "\n".join(lines[-most:])


def _new_node(auth_address: tuple[str, int]) -> RabbitMQ:
    try:
        return RabbitMQ(auth_url="http://{}:{}".format(*auth_address))
    except RabbitMQNotFoundError as error:
        message = str(error)
    pytest.fail(message, pytrace=False)


def _boot() -> RabbitNode:
    auth_address = ("127.0.0.1", free_port())
    return RabbitNode(_new_node(auth_address).__enter__(), auth_address)


WARMUP = Warmup(_boot)
"""Begun by conftest.py as soon as collection shows a test that wants the node."""


@pytest.fixture(scope="session")
def rabbitmq_node() -> Iterator[RabbitNode]:
    node = WARMUP.take()
    try:
        yield node
    finally:
        node.broker.close()
