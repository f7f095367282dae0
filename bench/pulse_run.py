"""The Pulse run of the benchmark: the real worker with its real sinks (Redis, VictoriaMetrics).

Not wired yet: the Pulse engineer fills in :func:`run_pulse`. ``bench.run`` calls it after the
other systems with a :class:`~bench.run.BenchContext` and prints whatever it returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.measure import RunResult
    from bench.run import BenchContext


def run_pulse(context: BenchContext) -> RunResult:
    """Run the Pulse worker over ``context.topic`` and measure it; return its RunResult.

    What the runner provides (see :class:`bench.run.BenchContext`): the broker
    (``context.bootstrap`` as HOST:PORT, ``context.broker_url`` as kafka://HOST:PORT),
    ``context.redis_url``, ``context.influx_url`` (VictoriaMetrics), the input ``context.topic``
    already holding ``context.readings`` readings in ``context.partitions`` partitions,
    ``context.windows`` (e.g. "10s,1m"), ``context.grace_seconds``, a fresh
    ``context.work_dir`` for state and logs, and ``context.run_id`` to make the app id (and so
    the consumer group and internal topics) unique on this broker.

    What it must return: a :class:`bench.measure.RunResult` with ``system="pulse"``,
    ``readings`` = readings processed, ``seconds`` = first reading consumed to last window
    emitted (all readings' effects flushed to Redis and every closable window written),
    ``cpu_seconds`` = the worker's user+sys CPU over that interval, and ``windows_emitted``.
    Run the worker in a subprocess through :func:`bench.measure.run_measured_subprocess`,
    which also fills ``process_cpu_seconds`` and ``peak_rss_bytes``; inside the subprocess
    time it with :class:`bench.measure.Stopwatch` and write it with
    :func:`bench.measure.write_result`.
    """
    raise NotImplementedError("Pulse worker not yet wired")
