"""The Nexmark queries q0-q9, q11 and q12 as onceflow jobs over the generator's CSV files.

``build(query, input, output)`` returns a :class:`onceflow.Job` reading
``input/{persons,auctions,bids}`` and committing the query's lines to
``output`` (with ``query="all"``: every query in one job, query ``qN`` into
``output/qN``, each source read once). Records are tuples; times are seconds
(``ms / 1000``); output lines write times back as whole milliseconds.

| query | what | how |
| --- | --- | --- |
| q0 | pass bids through | map |
| q1 | price in euros (``price * 908 // 1000``) | map |
| q2 | bids of auctions ``id % 123 == 0`` | filter |
| q3 | sellers in OR/ID/CA with their category-10 auctions | connect |
| q4 | average winning price per category | interval join, timers, reduce |
| q5 | hot items: most bids per 10 s window every 2 s | sliding window, then window_all |
| q6 | average of each seller's last 10 winning prices | interval join, timers |
| q7 | highest bids per 10 s | keyed tumbling window, then window_all (both pre-aggregated) |
| q8 | new persons who opened an auction in the same 10 s | window join |
| q9 | winning bid of every auction | interval join, timers |
| q11 | bids per bidder session (gap 10 s) | session window |
| q12 | bids per bidder per 10 s of processing time | processing-time window |

Updating results (q4, q6) emit a line per update with a running count; the
line with the highest count per group is the final one.
"""

from __future__ import annotations

from typing import Any

from onceflow import (
    EventTimeSessionWindows,
    FileSink,
    FileSource,
    Job,
    KeyedCoProcessFunction,
    KeyedProcessFunction,
    SlidingEventTimeWindows,
    TumblingEventTimeWindows,
    TumblingProcessingTimeWindows,
)

QUERIES = ("q0", "q1", "q2", "q3", "q4", "q5", "q6", "q7", "q8", "q9", "q11", "q12")
MAX_AUCTION_SECONDS = 20.0
"""The generator's longest auction: a bid can win an auction only this long after it opened."""
Q3_STATES = ("OR", "ID", "CA")
UNTIMED = ("q0", "q1", "q2")
"""Queries that need no event time: run alone, their streams get no ``assign_timestamps``."""


# -- parsing and formatting --------------------------------------------------------------------


def parse_bids(lines: list[str]) -> list[tuple]:
    """``auction,bidder,price,channel,ts`` -> ``(auction, bidder, price, channel, seconds)``."""
    out = []
    for line in lines:
        a, b, p, c, t = line.split(",")
        out.append((int(a), int(b), int(p), c, int(t) / 1000))
    return out


def parse_auctions(lines: list[str]) -> list[tuple]:
    """``id,item,initial,reserve,ts,expires,seller,category`` -> a tuple with times in seconds."""
    out = []
    for line in lines:
        i, item, initial, reserve, t, expires, seller, category = line.split(",")
        out.append(
            (
                int(i),
                item,
                int(initial),
                int(reserve),
                int(t) / 1000,
                int(expires) / 1000,
                int(seller),
                int(category),
            )
        )
    return out


def parse_persons(lines: list[str]) -> list[tuple]:
    """``id,name,email,card,city,state,ts`` -> ``(id, name, email, card, city, state, seconds)``."""
    out = []
    for line in lines:
        i, name, email, card, city, state, t = line.split(",")
        out.append((int(i), name, email, card, city, state, int(t) / 1000))
    return out


def ms(seconds: float) -> int:
    """A time in seconds as whole milliseconds (window bounds, event times)."""
    return round(seconds * 1000)


def _ts(record: tuple) -> float:
    return record[-1]


def _auction_ts(record: tuple) -> float:
    return record[4]


# -- the queries ---------------------------------------------------------------------------------


class Sources:
    """The three event streams of one job, read and parsed lazily (a query uses what it needs)."""

    def __init__(self, job: Job, input: str, max_delay: float, *, timed: bool = True) -> None:
        self.job, self.input, self.max_delay, self.timed = job, input.rstrip("/"), max_delay, timed
        self._made: dict[str, Any] = {}

    def _read(self, kind: str, parse: Any, ts: Any) -> Any:
        if kind not in self._made:
            stream = self.job.source(
                FileSource(f"{self.input}/{kind}"), name=f"read-{kind}", uid=f"read-{kind}"
            ).map_batches(parse, name=f"parse-{kind}", uid=f"parse-{kind}")
            if self.timed:
                stream = stream.assign_timestamps(
                    ts, max_delay=self.max_delay, name=f"time-{kind}", uid=f"time-{kind}"
                )
            self._made[kind] = stream
        return self._made[kind]

    @property
    def bids(self) -> Any:
        return self._read("bids", parse_bids, _ts)

    @property
    def auctions(self) -> Any:
        return self._read("auctions", parse_auctions, _auction_ts)

    @property
    def persons(self) -> Any:
        return self._read("persons", parse_persons, _ts)

    @property
    def winners(self) -> Any:
        """``(auction, winning bid)`` of every auction with a bid, when the auction expires (q4, q6, q9)."""
        if "winners" not in self._made:
            self._made["winners"] = (
                self.auctions.key_by(lambda a: a[0])
                .interval_join(self.bids.key_by(lambda b: b[0]), lower=0.0, upper=MAX_AUCTION_SECONDS)
                .process(bid_in_auction, name="winners-join", uid="winners-join")
                .key_by(lambda p: p[0][0])
                .process(Winner(), name="winners", uid="winners")
            )
        return self._made["winners"]


def _sink(stream: Any, output: str, query: str, encoder: Any) -> None:
    stream.sink(FileSink(output, encoder=encoder), name=f"{query}-out", uid=f"{query}-out")


def bid_line(b: tuple) -> str:
    return f"{b[0]},{b[1]},{b[2]},{b[3]},{ms(b[4])}"


def q0(s: Sources, output: str) -> None:
    """Pass every bid through."""
    _sink(s.bids, output, "q0", bid_line)


def to_euro(b: tuple) -> tuple:
    return (b[0], b[1], b[2] * 908 // 1000, b[4])


def q1_line(b: tuple) -> str:
    return f"{b[0]},{b[1]},{b[2]},{ms(b[3])}"


def q1(s: Sources, output: str) -> None:
    """Convert every bid's price to euros."""
    _sink(s.bids.map(to_euro, name="q1-euro", uid="q1-euro"), output, "q1", q1_line)


def q2_keep(b: tuple) -> bool:
    return b[0] % 123 == 0


def q2(s: Sources, output: str) -> None:
    """Bids of a few auctions."""
    _sink(s.bids.filter(q2_keep, name="q2-filter", uid="q2-filter"), output, "q2", lambda b: f"{b[0]},{b[2]}")


class LocalItems(KeyedCoProcessFunction):
    """q3, keyed by person id: keep the person, and its auctions until the person is known."""

    def process_element1(self, person: tuple, ctx: Any) -> list:
        ctx.value_state("person").update(person)
        pending = ctx.list_state("auctions")
        out = [_q3_line(person, a) for a in pending.get()]
        pending.clear()
        return out

    def process_element2(self, auction: tuple, ctx: Any) -> list:
        person = ctx.value_state("person").value()
        if person is None:
            ctx.list_state("auctions").add(auction)
            return []
        return [_q3_line(person, auction)]


def _q3_line(person: tuple, auction: tuple) -> str:
    return f"{person[1]},{person[4]},{person[5]},{auction[0]}"


def q3(s: Sources, output: str) -> None:
    """Sellers in OR, ID or CA with their auctions of category 10."""
    persons = s.persons.filter(lambda p: p[5] in Q3_STATES, name="q3-states", uid="q3-states")
    auctions = s.auctions.filter(lambda a: a[7] == 10, name="q3-category", uid="q3-category")
    joined = (
        persons.key_by(lambda p: p[0])
        .connect(auctions.key_by(lambda a: a[6]))
        .process(LocalItems(), name="q3-join", uid="q3-join")
    )
    _sink(joined, output, "q3", str)


def bid_in_auction(auction: tuple, bid: tuple) -> list:
    """A bid (right) counts for an auction (left) if it came before the auction expired.

    Strictly before: the winner's timer fires when the watermark reaches the
    expiry, so every bid that counts has arrived by then.
    """
    return [(auction, bid)] if bid[4] < auction[5] else []


class Winner(KeyedProcessFunction):
    """Keyed by auction: the best bid (highest price, then earliest, then lowest bidder) at expiry.

    The pairs carry no timestamp of their own: the timer at the auction's expiry
    fires on the join's watermark (the minimum of the auctions' and the bids').
    """

    def process_element(self, pair: tuple, ctx: Any) -> None:
        auction, bid = pair
        best = ctx.value_state("best")
        current = best.value()
        if current is None:
            ctx.timers.register_event_time(auction[5])
        if current is None or (-bid[2], bid[4], bid[1]) < (-current[1][2], current[1][4], current[1][1]):
            best.update((auction, bid))

    def on_timer(self, timestamp: float, ctx: Any) -> list:
        state = ctx.value_state("best")
        winner = state.value()
        state.clear()
        return [winner]


def _running_sum(acc: tuple, value: tuple) -> tuple:
    return (acc[0], acc[1] + value[1], acc[2] + value[2])


def q4(s: Sources, output: str) -> None:
    """Average winning price per category: lines ``category,count,sum`` (running; highest count final)."""
    totals = (
        s.winners.map(lambda w: (w[0][7], 1, w[1][2]), name="q4-price", uid="q4-price")
        .key_by(lambda c: c[0])
        .reduce(_running_sum, name="q4-average", uid="q4-average")
    )
    _sink(totals, output, "q4", lambda t: f"{t[0]},{t[1]},{t[2]}")


def _count(acc: int, record: Any) -> int:
    return acc + 1


def _add(a: int, b: int) -> int:
    return a + b


def _zero() -> int:
    return 0


def _same(acc: Any) -> Any:
    return acc


def hottest(window: Any, counts: list) -> list:
    """q5: the auctions with the most bids in one sliding window (ties: all of them)."""
    top = max(c[2] for c in counts)
    return [f"{ms(c[1].start)},{ms(c[1].end)},{c[0]},{c[2]}" for c in counts if c[2] == top]


def q5(s: Sources, output: str) -> None:
    """Hot items: per sliding window of 10 s every 2 s, the auctions with the most bids."""
    hot = (
        s.bids.key_by(lambda b: b[0])
        .window(SlidingEventTimeWindows(10.0, 2.0))
        .aggregate(_count, _add, _same, _zero, name="q5-count", uid="q5-count")
        .window_all(TumblingEventTimeWindows(2.0))
        .process(hottest, name="q5-hottest", uid="q5-hottest")
    )
    _sink(hot, output, "q5", str)


class LastTen(KeyedProcessFunction):
    """q6, keyed by seller: winning prices in expiry order; emit the average of the last 10."""

    def process_element(self, winner: tuple, ctx: Any) -> None:
        auction = winner[0]
        pending = ctx.map_state("pending")
        waiting = pending.get(auction[5])
        pending.put(auction[5], (*(waiting or ()), (auction[0], winner[1][2])))
        ctx.timers.register_event_time(auction[5])

    def on_timer(self, timestamp: float, ctx: Any) -> list:
        pending = ctx.map_state("pending")
        due = sorted(pending.get(timestamp))
        pending.remove(timestamp)
        state = ctx.value_state("last")
        count, prices = state.value((0, ()))
        out = []
        for _, price in due:
            count += 1
            prices = (*prices, price)[-10:]
            out.append(f"{ctx.key},{count},{sum(prices)},{len(prices)}")
        state.update((count, prices))
        return out


def q6(s: Sources, output: str) -> None:
    """Average selling price per seller over their last 10 closed auctions (lines ``seller,n,sum,k``)."""
    averages = s.winners.key_by(lambda w: w[0][6]).process(LastTen(), name="q6-last10", uid="q6-last10")
    _sink(averages, output, "q6", str)


def _max_bids_init() -> tuple:
    return (-1, ())


def _max_bids_add(acc: tuple, bid: tuple) -> tuple:
    if bid[2] > acc[0]:
        return (bid[2], (bid,))
    if bid[2] == acc[0]:
        return (acc[0], (*acc[1], bid))
    return acc


def _max_bids_merge(a: tuple, b: tuple) -> tuple:
    if a[0] != b[0]:
        return a if a[0] > b[0] else b
    return (a[0], a[1] + b[1])


def _max_bids_of(acc: tuple, best: tuple) -> tuple:
    """Fold one auction's window result ``(auction, window, (price, bids))`` into the window's best."""
    return _max_bids_merge(acc, best[2])


def highest_lines(best: tuple) -> list:
    """q7: a line per bid with the highest price of one tumbling window (ties: all of them)."""
    window, (_, bids) = best
    return [f"{ms(window.start)},{bid_line(b)}" for b in bids]


def q7(s: Sources, output: str) -> None:
    """Highest bid per 10 s: each auction's best bids per window, then the best of those."""
    best = (
        s.bids.key_by(lambda b: b[0])
        .window(TumblingEventTimeWindows(10.0))
        .aggregate(_max_bids_add, _max_bids_merge, _same, _max_bids_init, name="q7-per-key", uid="q7-per-key")
        .window_all(TumblingEventTimeWindows(10.0))
        .aggregate(_max_bids_of, _max_bids_merge, _same, _max_bids_init, name="q7-highest", uid="q7-highest")
        .flat_map(highest_lines, name="q7-lines", uid="q7-lines")
    )
    _sink(best, output, "q7", str)


def new_sellers(key: int, window: Any, persons: list, auctions: list) -> list:
    """q8: a person who joined and opened an auction in the same window."""
    if not auctions:
        return []
    return [f"{p[0]},{p[1]},{ms(window.start)}" for p in persons]


def q8(s: Sources, output: str) -> None:
    """Monitor new users: persons with an auction in the same 10 s tumbling window."""
    joined = (
        s.persons.key_by(lambda p: p[0])
        .window_join(s.auctions.key_by(lambda a: a[6]), TumblingEventTimeWindows(10.0))
        .process(new_sellers, name="q8-join", uid="q8-join")
    )
    _sink(joined, output, "q8", str)


def q9_line(w: tuple) -> str:
    a, b = w
    return f"{a[0]},{a[6]},{a[7]},{ms(a[5])},{b[1]},{b[2]},{ms(b[4])}"


def q9(s: Sources, output: str) -> None:
    """The winning bid of every auction (highest price, then earliest) that had one."""
    _sink(s.winners, output, "q9", q9_line)


def session_line(key: int, window: Any, value: int) -> str:
    return f"{key},{ms(window.start)},{ms(window.end)},{value}"


def q11(s: Sources, output: str) -> None:
    """Bids per bidder session (sessions end after 10 s without a bid)."""
    sessions = (
        s.bids.key_by(lambda b: b[1])
        .window(EventTimeSessionWindows(gap=10.0))
        .aggregate(_count, _add, _same, _zero, name="q11-sessions", uid="q11-sessions")
    )
    _sink(sessions, output, "q11", lambda r: session_line(*r))


def q12(s: Sources, output: str) -> None:
    """Bids per bidder per 10 s of processing time (lines ``bidder,count``; the sum per bidder is fixed)."""
    counts = (
        s.bids.key_by(lambda b: b[1])
        .window(TumblingProcessingTimeWindows(10.0))
        .aggregate(_count, _add, _same, _zero, name="q12-counts", uid="q12-counts")
    )
    _sink(counts, output, "q12", lambda r: f"{r[0]},{r[2]}")


BUILDERS = {q.__name__: q for q in (q0, q1, q2, q3, q4, q5, q6, q7, q8, q9, q11, q12)}


def build(query: str, input: str, output: str, *, max_delay: float = 0.0) -> Job:
    """The job of ``query`` (one of :data:`QUERIES`, or ``"all"`` into ``output/qN``)."""
    if query != "all" and query not in BUILDERS:
        msg = f"unknown Nexmark query {query!r}: one of {', '.join(QUERIES)} or 'all'"
        raise ValueError(msg)
    job = Job(f"nexmark-{query}")
    sources = Sources(job, input, max_delay, timed=query not in UNTIMED)
    if query == "all":
        for name in QUERIES:
            BUILDERS[name](sources, f"{output.rstrip('/')}/{name}")
    else:
        BUILDERS[query](sources, output)
    return job
