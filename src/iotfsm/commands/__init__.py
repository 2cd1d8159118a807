"""The `iotfsm` subcommands, one module each; `iotfsm.cli` mounts them."""
