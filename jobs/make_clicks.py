"""Generate a click log for ``jobs/sessionize.py``: out-of-order, with late and very late clicks.

Usage (from the repository root)::

    python jobs/make_clicks.py                       # data/clicks: 200 users, 1 day (shipped)
    python jobs/make_clicks.py --users 20000 --out data/generated/clicks   # ~1 million clicks

The log is rotated hourly: ``clicks-2026-03-02T08.csv`` holds the clicks
*received* in that hour, in the order they were received, after a header line
``ts,user,page``; ``ts`` is the ISO-8601 UTC time the click *happened*. Users browse in
sessions (a click every ~1 minute, sessions separated by 1-8 hours of
silence). Network delay makes the log out of order: most clicks arrive within
2 minutes, about 1% arrive 10-50 minutes late (still within the job's default
allowed lateness of one hour) and about 0.2% arrive 2-6 hours late (too late:
the job sends them to ``out/sessions-late``). The same seed gives the same files.
"""

from __future__ import annotations

import argparse
import random
from datetime import UTC, datetime
from pathlib import Path

PAGES = ["home", "search", "cart", "checkout", "help", "account"] + [f"product-{i}" for i in range(40)]
START = datetime(2026, 3, 2, tzinfo=UTC).timestamp()


def iso(t: float) -> str:
    """Format epoch seconds as ``2026-03-02T08:15:03.250Z``."""
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clicks(users: int, days: float, seed: int) -> list[tuple[float, float, str, str]]:
    """Return ``(arrival, ts, user, page)`` for every click, unsorted."""
    rng = random.Random(seed)
    out = []
    end = START + days * 86400
    for u in range(users):
        user = f"u{u:05d}"
        t = START + rng.uniform(0, 6 * 3600)
        while t < end:
            for _ in range(rng.randint(1, 25)):  # one session
                page = rng.choice(PAGES)
                roll = rng.random()
                if roll < 0.002:
                    delay = rng.uniform(2 * 3600, 6 * 3600)  # far too late
                elif roll < 0.012:
                    delay = rng.uniform(600, 3000)  # late, within the allowed lateness
                else:
                    delay = rng.uniform(0, 120)  # ordinary network delay
                ts = round(t, 3)
                out.append((ts + delay, ts, user, page))
                t += rng.expovariate(1 / 60)
            t += rng.uniform(3600, 8 * 3600)  # silence: the session ends
    return out


def write(directory: Path, users: int, days: float, seed: int) -> int:
    """Write one file per hour of arrival; return the number of clicks."""
    rows = clicks(users, days, seed)
    rows.sort()
    files: dict[str, list[str]] = {}
    for arrival, ts, user, page in rows:
        hour = iso(arrival)[:13]
        files.setdefault(hour, ["ts,user,page\n"]).append(f"{iso(ts)},{user},{page}\n")
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("clicks-*.csv"):
        old.unlink()
    for hour, lines in files.items():
        (directory / f"clicks-{hour}.csv").write_text("".join(lines), encoding="utf-8")
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/clicks", help="output folder (default: data/clicks)")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--days", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    n = write(Path(args.out), args.users, args.days, args.seed)
    print(f"wrote {n} clicks of {args.users} users to {args.out} (one file per hour)")


if __name__ == "__main__":
    main()
