"""Why the disk backend uses LMDB: the two embedded stores side by side on the backend's access pattern.

For LMDB (``lmdb``) and RocksDB (``rocksdict``), each in a fresh child
process: write ``n`` keys shaped like the backend's (key-group prefix plus a
canonical key encoding, a small pickled value) in batches of 1024 random
keys, read them back in random batches, then read-modify-write random
batches; report keys per second and the child's peak RSS. It also checks the
property a snapshot needs: a read view opened before a write must not see it.

Run: ``python benchmarks/state_store_choice.py [--keys 1000000]`` (needs ``pip install
rocksdict``).
"""

from __future__ import annotations

import argparse
import json
import pickle
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

BATCH = 1024


def _keys(n: int) -> list[bytes]:
    return [
        struct.pack(">HH", i % 128, 0) + b"S" + struct.pack("<I", 11) + f"key{i:08d}".encode()
        for i in range(n)
    ]


def _lmdb(directory: str) -> tuple[Callable, Callable, Callable]:
    import lmdb  # noqa: PLC0415

    env = lmdb.open(directory, map_size=1 << 40, sync=False, metasync=False, readahead=False)

    def write(items: list[tuple[bytes, bytes]]) -> None:
        with env.begin(write=True) as txn:
            txn.cursor().putmulti(sorted(items))

    def read(keys: list[bytes]) -> list:
        with env.begin() as txn:
            return txn.cursor().getmulti(sorted(keys))

    def isolated() -> bool:
        write([(b"iso-a", b"1")])
        view = env.begin()
        write([(b"iso-b", b"2")])
        seen = [k for k, _ in view.cursor() if k.startswith(b"iso-")]
        view.abort()
        return seen == [b"iso-a"]

    return write, read, isolated


def _rocksdb(directory: str) -> tuple[Callable, Callable, Callable]:
    from rocksdict import Options, Rdict, WriteBatch  # noqa: PLC0415

    db = Rdict(directory, Options(raw_mode=True))

    def write(items: list[tuple[bytes, bytes]]) -> None:
        batch = WriteBatch(raw_mode=True)
        for k, v in items:
            batch.put(k, v)
        db.write(batch)

    def read(keys: list[bytes]) -> list:
        return db.get(keys)

    def isolated() -> bool:
        write([(b"iso-a", b"1")])
        view = db.snapshot()
        write([(b"iso-b", b"2")])
        return [k for k, _ in view.items() if k.startswith(b"iso-")] == [b"iso-a"]

    return write, read, isolated


def child(store: str, n: int) -> dict:
    """Measure one store in this process."""
    directory = tempfile.mkdtemp(prefix=f"store-{store}-")
    try:
        write, read, isolated = (_lmdb if store == "lmdb" else _rocksdb)(directory)
        rng = random.Random(1)
        keys = _keys(n)
        value = pickle.dumps(12345, protocol=5)
        figures: dict = {"store": store, "keys": n}
        for phase in ("write", "read", "read_modify_write"):
            rng.shuffle(keys)
            start = time.perf_counter()
            for s in range(0, n, BATCH):
                batch = keys[s : s + BATCH]
                if phase != "write":
                    read(batch)
                if phase != "read":
                    write([(k, value) for k in batch])
            figures[f"{phase}_per_s"] = round(n / (time.perf_counter() - start))
        figures["snapshot_isolated"] = isolated()
        figures["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return figures
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--child", choices=["lmdb", "rocksdb"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.keys)))
        return
    print("| store | writes/s | reads/s | read-modify-writes/s | snapshot isolated | peak RSS |")
    print("|---|---|---|---|---|---|")
    for store in ("lmdb", "rocksdb"):
        cmd = [sys.executable, __file__, "--child", store, "--keys", str(args.keys)]
        f = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        print(
            f"| {store} | {f['write_per_s']:,} | {f['read_per_s']:,} | {f['read_modify_write_per_s']:,} "
            f"| {f['snapshot_isolated']} | {f['peak_rss_mib']} MiB |"
        )


if __name__ == "__main__":
    main()
