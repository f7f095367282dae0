"""Soak run, outside the suite: zombies made by SIGSTOP/SIGCONT at random moments.

    .venv/bin/python -m tests.soak.zombies --runs 5 --broker kafka   # about a minute per run

Each run: two workers of one app on a 6-partition topic; one is frozen (SIGSTOP) at a random
moment of the stream for a random time beyond the session timeout, so the other takes its
partitions over, then thawed (SIGCONT): it writes whatever it had in flight, late. Every
output must still equal the independent reference (tests/reference.py) exactly. The suite
has the deterministic version (tests/integration/test_zombie.py); this one hunts for the
timings nobody thought of. Exits 1 if any run differs, printing each run's seed and result.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from tests.helpers import kafka
from tests.helpers.scenarios import (
    PacedProducer,
    assert_outputs_exact,
    build_entries,
    next_offsets,
    reference_of,
    scenario_env,
    wait_until,
)
from tests.helpers.worker import WorkerProcess
from tests.servers import SessionServers

PARTITIONS = 8
SESSION_TIMEOUT_S = 2.0


def one_run(servers: SessionServers, broker_name: str, run: int, seed: int, root: Path) -> None:
    rng = random.Random(seed)
    prefix = f"soak{run}x{seed % 10_000}"
    broker = servers.get(broker_name).url
    redis_url, influx_url = servers.get("redis").url, servers.get("influx").url
    env = scenario_env(prefix, broker, redis_url, influx_url, partitions=PARTITIONS)
    env["PULSE_SESSION_TIMEOUT"] = str(SESSION_TIMEOUT_S)
    topic = env["PULSE_TOPIC_READINGS"]
    entries = build_entries(prefix, PARTITIONS, per_device=400)
    asyncio.run(kafka.create_topics(broker, {topic: PARTITIONS}))
    producer = PacedProducer(broker, topic, entries)
    producer.allow(0.1)
    producer.start()
    work = root / prefix
    workers = [WorkerProcess(env, work, name).start() for name in ("a", "b")]
    frozen = None
    try:
        for worker in workers:
            worker.wait_ready()
        wait_until(
            lambda: (
                set(next_offsets(workers[0])) | set(next_offsets(workers[1]))
                == set(range(PARTITIONS))
            ),
            "the workers to share the partitions",
            workers,
        )
        producer.allow(rng.uniform(0.3, 0.7))
        zombie, survivor = rng.sample(workers, 2)
        time.sleep(rng.uniform(0.0, 3.0))
        assert zombie.process is not None
        zombie.process.send_signal(signal.SIGSTOP)
        frozen = zombie
        pause = rng.uniform(SESSION_TIMEOUT_S + 1.0, 20.0)
        print(f"  run {run}: froze {zombie.name} for {pause:.1f} s", flush=True)
        wait_until(
            lambda: set(next_offsets(survivor)) == set(range(PARTITIONS)),
            "the survivor to take every partition",
            [survivor],
            producer,
        )
        producer.allow(rng.uniform(0.7, 0.95))
        time.sleep(max(0.0, pause - SESSION_TIMEOUT_S))
        zombie.process.send_signal(signal.SIGCONT)
        frozen = None
        stored = producer.finish()
        records, ends, expected = reference_of(entries, stored)

        def caught_up() -> bool:
            offsets = {**next_offsets(zombie), **next_offsets(survivor)}
            return set(offsets) == set(range(PARTITIONS)) and all(
                offsets[p] >= ends.get(p, 0) for p in offsets
            )

        wait_until(caught_up, "the workers to apply every record", workers, timeout=90)
        assert_outputs_exact(
            broker, redis_url, influx_url, env, expected, records, dead_letter_repeats=True
        )
    finally:
        if frozen is not None and frozen.process is not None:
            frozen.process.send_signal(signal.SIGCONT)
        producer.close()
        for worker in workers:
            worker.stop(signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--broker", choices=("kafka", "tansu"), default="kafka")
    parser.add_argument("--seed", type=int, default=None, help="first run's seed (default: random)")
    args = parser.parse_args()
    first_seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    root = Path(tempfile.mkdtemp(prefix="pulse-soak-"))
    servers = SessionServers(root / "servers")
    failures = 0
    try:
        for run in range(args.runs):
            seed = first_seed + run
            print(f"run {run} (seed {seed}) on {args.broker} ...", flush=True)
            try:
                one_run(servers, "broker" if args.broker == "tansu" else "kafka", run, seed, root)
            except Exception:
                failures += 1
                print(f"run {run} (seed {seed}): FAILED", flush=True)
                traceback.print_exc()
            else:
                print(f"run {run} (seed {seed}): every output equals the reference", flush=True)
    finally:
        servers.close()
    print(f"{args.runs - failures} of {args.runs} runs exact; work files in {root}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
