"""AMQP and RabbitMQ: routing keys on amq.topic, the node's configuration, the worker pool."""
