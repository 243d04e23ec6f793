"""Actor calls against Ray compiled graphs for moving one batch between two actors, in the same session.

The ray executor moves batches between actors with ordinary actor calls
(:mod:`onceflow.engine.transport.actors`). Ray also offers compiled graphs
(``dag.experimental_compile()``), which replace the per-call task submission
with pre-allocated shared-memory channels. This script measures what one batch
costs to hand from a producer actor to a consumer actor, for batches shaped
like the engine's (lists of ``(str, int)`` tuples, pickled), four ways:

* ``calls_round_trip``: the driver calls ``producer.produce`` and passes the
  result's reference to ``consumer.take``, then waits (the same graph as below,
  uncompiled);
* ``compiled_round_trip``: that graph compiled, ``execute`` then ``ray.get``;
* ``compiled_pipelined``: the compiled graph with up to ``--window``
  executions in flight;
* ``calls_actor_to_actor``: the transport's own shape: the producer calls
  ``consumer.deliver`` itself, fire and forget, with at most ``--window``
  unacknowledged calls (the credits of a channel; here the wait is on the
  calls' results, the transport returns credits as calls the other way).

Actors are ``num_cpus=1`` on one local Ray (``num_cpus=4`` for two pairs, of
which one works at a time; 127.0.0.1).
Each batch is built once per actor, so the figures are transport only:
serialization, the hand-over and, for the first three, the driver's part.
Modes are interleaved per round; figures are medians of ``--rounds``.

Run: ``python benchmarks/ray_transport_choice.py [--batches 300] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SIZES = (128, 1024, 8192)
"""Records per batch: a small batch, the default ``--batch-size``, a large one."""


def _batch(size: int) -> list[tuple[str, int]]:
    return [(f"user-{i % 5000}", i) for i in range(size)]


class Producer:
    def __init__(self, sizes: tuple[int, ...]) -> None:
        self.batches = {size: _batch(size) for size in sizes}

    def produce(self, size: int) -> list:
        return self.batches[size]

    def push(self, consumer, size: int, n: int, window: int) -> float:
        """Send ``n`` batches to ``consumer.deliver`` with at most ``window`` in flight; return seconds."""
        import ray

        batch = self.batches[size]
        started = time.perf_counter()
        inflight = []
        for seq in range(n):
            if len(inflight) >= window:
                _, inflight = ray.wait(inflight, num_returns=1)
            inflight.append(consumer.deliver.remote(seq, batch))
        ray.get(inflight)
        return time.perf_counter() - started


class Consumer:
    def take(self, batch: list) -> int:
        return len(batch)

    def deliver(self, seq: int, batch: list) -> int:
        return len(batch)


@dataclass(frozen=True)
class Pair:
    """What one batch size's modes run on: an uncompiled pair of actors and the compiled graph."""

    producer: Any
    consumer: Any
    compiled: Any
    """``consumer.take(producer.produce(size))`` compiled, on actors of its own."""
    size: int
    window: int


def calls_round_trip(pair: Pair, n: int) -> float:
    import ray

    started = time.perf_counter()
    for _ in range(n):
        ray.get(pair.consumer.take.remote(pair.producer.produce.remote(pair.size)))
    return time.perf_counter() - started


def compiled_round_trip(pair: Pair, n: int) -> float:
    import ray

    started = time.perf_counter()
    for _ in range(n):
        ray.get(pair.compiled.execute(pair.size))
    return time.perf_counter() - started


def compiled_pipelined(pair: Pair, n: int) -> float:
    import ray

    started = time.perf_counter()
    refs: list = []
    for _ in range(n):
        if len(refs) >= pair.window:
            ray.get(refs.pop(0))
        refs.append(pair.compiled.execute(pair.size))
    for ref in refs:
        ray.get(ref)
    return time.perf_counter() - started


def calls_actor_to_actor(pair: Pair, n: int) -> float:
    import ray

    return ray.get(pair.producer.push.remote(pair.consumer, pair.size, n, pair.window))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=300, help="batches per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=int, default=8, help="in flight (the default --channel-capacity)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ray_transport_choice.json"))
    args = parser.parse_args()

    import ray
    from ray.dag import InputNode

    # four actors (an uncompiled pair and a compiled one) of one CPU each; one pair works at a time
    ray.init(num_cpus=4, _node_ip_address="127.0.0.1", include_dashboard=False, configure_logging=False)
    producer_class = ray.remote(num_cpus=1)(Producer)
    consumer_class = ray.remote(num_cpus=1, max_concurrency=1)(Consumer)
    window = args.window
    results: dict[str, dict] = {}
    for size in SIZES:
        # a compiled graph owns its actors until torn down: fresh actors per size
        producer = producer_class.remote(SIZES)
        consumer = consumer_class.remote()
        ray.get([producer.produce.remote(size), consumer.take.remote([])])
        with InputNode() as inp:
            dag = consumer.take.bind(producer.produce.bind(inp))
        started = time.perf_counter()
        compiled = dag.experimental_compile(_max_inflight_executions=window)
        compile_s = time.perf_counter() - started
        other_producer = producer_class.remote(SIZES)
        other_consumer = consumer_class.remote()
        ray.get([other_producer.produce.remote(size), other_consumer.take.remote([])])
        n = max(20, args.batches * 1024 // max(size, 1024))

        pair = Pair(other_producer, other_consumer, compiled, size, window)
        modes = [calls_round_trip, compiled_round_trip, compiled_pipelined, calls_actor_to_actor]
        for mode in modes:  # warm-up
            mode(pair, 10)
        seconds: dict[str, list[float]] = {mode.__name__: [] for mode in modes}
        for _ in range(args.rounds):
            for mode in modes:
                seconds[mode.__name__].append(mode(pair, n))
        per_batch_ms = {name: 1000 * statistics.median(v) / n for name, v in seconds.items()}
        compiled.teardown()
        for actor in (producer, consumer, other_producer, other_consumer):
            ray.kill(actor)
        results[str(size)] = {
            "batches": n,
            "compile_s": compile_s,
            "per_batch_ms": per_batch_ms,
            "seconds": seconds,
        }
        print(
            f"batch of {size:>5} records: "
            + ", ".join(f"{name} {ms:.3f} ms" for name, ms in per_batch_ms.items())
            + f" (compile {compile_s:.2f} s, {n} batches per mode and round)",
            flush=True,
        )
    ray.shutdown()
    Path(args.out).write_text(json.dumps({"window": window, "sizes": results}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
