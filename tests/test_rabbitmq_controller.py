"""The private RabbitMQ node: isolated from the machine's own node, and gone after close()."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from rabbitmq_fixtures import RabbitNode

from iotfsm.testing.rabbitmq import RabbitMQ, RabbitMQNotFoundError, find_epmd


def test_a_missing_rabbitmq_server_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(RabbitMQNotFoundError, match="apt-get install rabbitmq-server"):
        RabbitMQ(scripts_dir=tmp_path)


def test_the_session_node_shares_nothing_with_a_system_node(rabbitmq_node: RabbitNode) -> None:
    broker = rabbitmq_node.broker
    env = broker.environment()
    assert broker.node_name.startswith("iotfsm-") and broker.node_name.endswith("@localhost")
    assert env["HOME"].startswith(str(broker.directory))
    assert (Path(env["HOME"]) / ".erlang.cookie").stat().st_mode & 0o777 == 0o400
    assert {broker.port, broker.amqp_port, broker.dist_port, broker.epmd_port}.isdisjoint(
        {1883, 4369, 5672, 25672}
    )
    for variable in ("RABBITMQ_MNESIA_BASE", "RABBITMQ_LOG_BASE", "RABBITMQ_CONFIG_FILE",
                     "RABBITMQ_ENABLED_PLUGINS_FILE", "RABBITMQ_CONF_ENV_FILE"):  # fmt: skip
        assert env[variable].startswith(str(broker.directory)), variable
    # our own epmd knows our node only, on the dist port we chose
    names = subprocess.run(
        [find_epmd(), "-port", str(broker.epmd_port), "-names"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    node = broker.node_name.split("@")[0]
    assert f"name {node} at port {broker.dist_port}" in names
    assert names.count("name ") == 1
    # the CLI reaches it (same cookie, same epmd) and it runs our plugins
    plugins = broker.ctl("eval", "[A || {A, _, _} <- application:which_applications()].")
    assert plugins.returncode == 0, plugins.stderr
    assert "rabbitmq_mqtt" in plugins.stdout and "rabbitmq_auth_backend_http" in plugins.stdout


def test_close_removes_every_file(tmp_path: Path) -> None:
    broker = RabbitMQ(auth_url="http://127.0.0.1:9")
    directory = broker.directory
    assert (directory / "rabbitmq.conf").read_text().count("auth_http.") == 7
    assert "ignore_colons_in_username" in (directory / "advanced.config").read_text()
    broker.close()
    broker.close()  # twice is fine
    assert not directory.exists()
