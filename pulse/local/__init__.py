"""The local development stack: a Kafka-compatible broker, Redis and an InfluxDB stand-in on
loopback, for ``scripts/demo``, ``pulse stack`` and the tests.

A development tool, not part of the worker: nothing the worker runs imports it (an
import-linter contract in pyproject.toml holds that), and its dependencies come with the
``local`` extra (``pip install -e '.[local]'``, which scripts/setup installs).
"""
