"""A seeded generator of the standard Nexmark events: persons, auctions and bids, to CSV files.

As in the Nexmark generator: event ``i`` is a person, an auction or a bid in
the proportion 1 : 3 : 46 of every 50 events; events are ``inter_event_ms``
milliseconds apart; a bid goes to a "hot" auction (the latest one) with
probability 1/2 (``HOT_AUCTION_RATIO``), else to one of the recent auctions;
a bidder and a seller is a hot person with probability 3/4, else a recent
one; auctions expire after a random duration, persons live in one of a few
US states and cities.

Each kind goes to its own folder, ``files`` files of consecutive event times
(file ``f`` holds the ``f``-th stretch of time), so a reader of the files in
name order sees times that never go back. Lines (``ts`` in milliseconds):

* ``persons/``: ``id,name,email,credit_card,city,state,ts``
* ``auctions/``: ``id,item_name,initial_bid,reserve,ts,expires,seller,category``
* ``bids/``: ``auction,bidder,price,channel,ts``
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

PERSON_PROPORTION = 1
AUCTION_PROPORTION = 3
BID_PROPORTION = 46
PROPORTION = PERSON_PROPORTION + AUCTION_PROPORTION + BID_PROPORTION
HOT_AUCTION_RATIO = 2
HOT_BIDDER_RATIO = 4
HOT_SELLER_RATIO = 4
FIRST_PERSON_ID = 1000
FIRST_AUCTION_ID = 1000
FIRST_CATEGORY_ID = 10
NUM_CATEGORIES = 5
NUM_ACTIVE_PEOPLE = 1000
NUM_IN_FLIGHT_AUCTIONS = 100
STATES = ("AZ", "CA", "ID", "OR", "WA", "WY")
CITIES = (
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
)
FIRST_NAMES = ("Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter")
LAST_NAMES = ("Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris")
CHANNELS = ("Google", "Facebook", "Baidu", "Apple")
KINDS = ("persons", "auctions", "bids")


@dataclass(frozen=True)
class Counts:
    """How many events of each kind a generation wrote."""

    persons: int
    auctions: int
    bids: int

    @property
    def total(self) -> int:
        return self.persons + self.auctions + self.bids


def _kind(i: int) -> str:
    r = i % PROPORTION
    if r < PERSON_PROPORTION:
        return "persons"
    if r < PERSON_PROPORTION + AUCTION_PROPORTION:
        return "auctions"
    return "bids"


def generate(
    directory: Path | str, n: int, *, seed: int = 1, files: int = 8, inter_event_ms: int = 1
) -> Counts:
    """Write ``n`` events (ids from event 0, times from 0 ms) under ``directory``; return the counts."""
    rng = random.Random(seed)
    root = Path(directory)
    lines: dict[str, list[str]] = {kind: [] for kind in KINDS}
    times: dict[str, list[int]] = {kind: [] for kind in KINDS}
    person_id = FIRST_PERSON_ID
    auction_id = FIRST_AUCTION_ID
    for i in range(n):
        ts = i * inter_event_ms
        kind = _kind(i)
        if kind == "persons":
            name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
            card = " ".join(f"{rng.randrange(10000):04d}" for _ in range(4))
            email = f"{name.replace(' ', '.').lower()}@example.com"
            line = f"{person_id},{name},{email},{card},{rng.choice(CITIES)},{rng.choice(STATES)},{ts}"
            person_id += 1
        elif kind == "auctions":
            seller = _person(rng, person_id, HOT_SELLER_RATIO)
            initial = rng.randint(1, 1000)
            expires = ts + rng.randint(2_000, 20_000)
            category = FIRST_CATEGORY_ID + rng.randrange(NUM_CATEGORIES)
            reserve = initial + rng.randint(0, 1000)
            line = f"{auction_id},item-{auction_id},{initial},{reserve},{ts},{expires},{seller},{category}"
            auction_id += 1
        else:
            last = auction_id - 1
            if last < FIRST_AUCTION_ID:
                continue  # no auction yet: the first bids of the stream have nothing to bid on
            if rng.randrange(HOT_AUCTION_RATIO) > 0:
                auction = last
            else:
                auction = max(FIRST_AUCTION_ID, last - rng.randrange(NUM_IN_FLIGHT_AUCTIONS))
            bidder = _person(rng, person_id, HOT_BIDDER_RATIO)
            price = rng.randint(1, 100) * rng.choice((1, 1, 1, 10, 100))
            line = f"{auction},{bidder},{price},{rng.choice(CHANNELS)},{ts}"
        lines[kind].append(line)
        times[kind].append(ts)
    span = max(n * inter_event_ms, 1)
    for kind in KINDS:
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        chunks: list[list[str]] = [[] for _ in range(files)]
        for line, ts in zip(lines[kind], times[kind]):
            chunks[min(files - 1, ts * files // span)].append(line)
        for f, chunk in enumerate(chunks):
            (folder / f"{kind}-{f:03d}.csv").write_text("".join(f"{line}\n" for line in chunk))
    return Counts(len(lines["persons"]), len(lines["auctions"]), len(lines["bids"]))


def _person(rng: random.Random, next_id: int, hot_ratio: int) -> int:
    """A bidder or seller: the latest person (hot) most of the time, else a recent one."""
    last = max(FIRST_PERSON_ID, next_id - 1)
    if rng.randrange(hot_ratio) > 0:
        return last
    return max(FIRST_PERSON_ID, last - rng.randrange(NUM_ACTIVE_PEOPLE))


def count_events(directory: Path | str) -> Counts:
    """Count the events ``generate`` wrote under ``directory`` (one per line)."""
    n = {}
    for kind in KINDS:
        n[kind] = sum(sum(1 for _ in open(p, "rb")) for p in sorted((Path(directory) / kind).iterdir()))
    return Counts(n["persons"], n["auctions"], n["bids"])


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.nexmark.generator DIR N [SEED [FILES]]``: write N events under DIR."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    seed = int(args[2]) if len(args) > 2 else 1
    files = int(args[3]) if len(args) > 3 else 8
    counts = generate(args[0], int(args[1]), seed=seed, files=files)
    print(
        f"wrote {counts.total} events: {counts.persons} persons, {counts.auctions} auctions, "
        f"{counts.bids} bids"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
