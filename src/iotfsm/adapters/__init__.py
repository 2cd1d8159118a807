"""The edges of iotfsm: codec, topics, transports, HTTP transfers, stores, clock."""
