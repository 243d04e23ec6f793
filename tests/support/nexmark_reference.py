"""The Nexmark queries' expected output, computed by DuckDB SQL over the generator's CSV files.

Independent of the engine: each query is one SQL statement over the same
files, with times in whole milliseconds, producing the exact lines the job
commits (for updating results, q4 and q6, the final value per group; for
q12, whose windows are processing time, the total per bidder).
:func:`committed` reads a query's committed lines into the same shape.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

COLUMNS = {
    "persons": "{'id': 'BIGINT', 'name': 'VARCHAR', 'email': 'VARCHAR', 'card': 'VARCHAR', "
    "'city': 'VARCHAR', 'state': 'VARCHAR', 'ts': 'BIGINT'}",
    "auctions": "{'id': 'BIGINT', 'item': 'VARCHAR', 'initial': 'BIGINT', 'reserve': 'BIGINT', "
    "'ts': 'BIGINT', 'expires': 'BIGINT', 'seller': 'BIGINT', 'category': 'BIGINT'}",
    "bids": "{'auction': 'BIGINT', 'bidder': 'BIGINT', 'price': 'BIGINT', 'channel': 'VARCHAR', "
    "'ts': 'BIGINT'}",
}

WINNERS = """
winners AS (
    SELECT a.id, a.seller, a.category, a.expires, b.bidder, b.price, b.ts,
           row_number() OVER (PARTITION BY a.id ORDER BY b.price DESC, b.ts, b.bidder) AS rank
    FROM auctions a JOIN bids b ON b.auction = a.id AND b.ts >= a.ts AND b.ts <= a.ts + 20000
                                   AND b.ts < a.expires
)"""

SQL = {
    "q0": "SELECT concat_ws(',', auction, bidder, price, channel, ts) FROM bids",
    "q1": "SELECT concat_ws(',', auction, bidder, price * 908 // 1000, ts) FROM bids",
    "q2": "SELECT concat_ws(',', auction, price) FROM bids WHERE auction % 123 = 0",
    "q3": """SELECT concat_ws(',', p.name, p.city, p.state, a.id) FROM persons p JOIN auctions a
             ON a.seller = p.id WHERE p.state IN ('OR', 'ID', 'CA') AND a.category = 10""",
    "q4": f"""WITH {WINNERS}
              SELECT concat_ws(',', category, count(*), sum(price)) FROM winners WHERE rank = 1
              GROUP BY category""",
    "q5": """WITH windowed AS (
                 SELECT auction, ts // 2000 * 2000 - k * 2000 AS start
                 FROM bids, range(5) AS r(k)
             ), counts AS (
                 SELECT start, auction, count(*) AS n FROM windowed GROUP BY start, auction
             ), tops AS (SELECT start, max(n) AS top FROM counts GROUP BY start)
             SELECT concat_ws(',', c.start, c.start + 10000, c.auction, c.n)
             FROM counts c JOIN tops t ON c.start = t.start AND c.n = t.top""",
    "q6": f"""WITH {WINNERS}, ordered AS (
                 SELECT seller, price, count(*) OVER (PARTITION BY seller) AS n,
                        row_number() OVER (PARTITION BY seller ORDER BY expires DESC, id DESC) AS back
                 FROM winners WHERE rank = 1
              )
              SELECT concat_ws(',', seller, any_value(n), sum(price), count(*)) FROM ordered
              WHERE back <= 10 GROUP BY seller""",
    "q7": """WITH tops AS (SELECT ts // 10000 AS w, max(price) AS top FROM bids GROUP BY w)
             SELECT concat_ws(',', b.ts // 10000 * 10000, b.auction, b.bidder, b.price, b.channel, b.ts)
             FROM bids b JOIN tops t ON b.ts // 10000 = t.w AND b.price = t.top""",
    "q8": """SELECT DISTINCT concat_ws(',', p.id, p.name, p.ts // 10000 * 10000) FROM persons p
             JOIN auctions a ON a.seller = p.id AND a.ts // 10000 = p.ts // 10000""",
    "q9": f"""WITH {WINNERS}
              SELECT concat_ws(',', id, seller, category, expires, bidder, price, ts) FROM winners
              WHERE rank = 1""",
    "q11": """WITH marked AS (
                  SELECT bidder, ts, CASE WHEN ts - lag(ts) OVER (PARTITION BY bidder ORDER BY ts) < 10000
                                          THEN 0 ELSE 1 END AS new FROM bids
              ), numbered AS (
                  SELECT bidder, ts, sum(new) OVER (PARTITION BY bidder ORDER BY ts
                                                    ROWS UNBOUNDED PRECEDING) AS session FROM marked
              )
              SELECT concat_ws(',', bidder, min(ts), max(ts) + 10000, count(*)) FROM numbered
              GROUP BY bidder, session""",
    "q12": "SELECT concat_ws(',', bidder, count(*)) FROM bids GROUP BY bidder",
}


def expected(data: Path, query: str) -> Counter:
    """The lines ``query`` must commit (final values for q4/q6, totals for q12), as a multiset."""
    import duckdb

    con = duckdb.connect()
    for kind, columns in COLUMNS.items():
        con.execute(
            f"CREATE VIEW {kind} AS SELECT * FROM read_csv('{data / kind}/*.csv', header = false, "
            f"columns = {columns}, delim = ',', quote = '', escape = '')"
        )
    return Counter(row[0] for row in con.execute(SQL[query]).fetchall())


def committed(lines: list[str], query: str) -> Counter:
    """A query's committed lines in the shape of :func:`expected`.

    q4 (``category,count,sum``) and q6 (``seller,n,sum,k``) commit one line
    per update with a running count: the line with the highest count is the
    final one. q12's windows depend on the clock: its per-bidder total does not.
    """
    if query in ("q4", "q6"):
        final: dict[str, tuple[int, str]] = {}
        for line in lines:
            group, count = line.split(",", 2)[:2]
            if group not in final or int(count) > final[group][0]:
                final[group] = (int(count), line)
        return Counter(line for _, line in final.values())
    if query == "q12":
        totals: Counter = Counter()
        for line in lines:
            bidder, count = line.split(",")
            totals[bidder] += int(count)
        return Counter(f"{bidder},{n}" for bidder, n in totals.items())
    return Counter(lines)


def differences(got: Counter, want: Counter) -> dict[str, int]:
    """Figures of a comparison: committed, expected, lost, unexpected (a duplicate counts as unexpected)."""
    return {
        "committed": sum(got.values()),
        "expected": sum(want.values()),
        "lost": sum((want - got).values()),
        "unexpected": sum((got - want).values()),
    }
