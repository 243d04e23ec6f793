"""Input generator and plain-Python oracle for the chaos counting job (``jobs/chaos_job.py``).

Input: ``n`` records ``id,key,value`` with ``key = f"user-{id % k}"`` and
``value = value_of(id)``. Record ``id`` goes to file ``(id % k) % n_files``, so
all records of one key live in one file, in id order: the per-key order the
keyed job sees is the id order whatever the parallelism, and every running
count/sum is deterministic.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path


def value_of(rid: int) -> int:
    return (rid * 7919) % 10007


def write_input(directory: Path, n: int, k: int, n_files: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    chunks: list[list[str]] = [[] for _ in range(n_files)]
    for rid in range(n):
        chunks[(rid % k) % n_files].append(f"{rid},user-{rid % k},{value_of(rid)}\n")
    for f, lines in enumerate(chunks):
        (directory / f"in-{f:03d}.csv").write_text("".join(lines))


def expected(n: int, k: int, mode: str) -> dict[str, str]:
    """Return ``{identity: line}`` of the complete committed output."""
    out: dict[str, str] = {}
    if mode == "keyed":
        state: dict[str, tuple[int, int]] = {}
        for rid in range(n):
            if rid % 7 == 3:
                continue
            key = f"user-{rid % k}"
            count, total = state.get(key, (0, 0))
            state[key] = (count + 1, total + value_of(rid))
            out[str(rid)] = f"{rid},{key},{count + 1},{total + value_of(rid)}"
        return out
    words: Counter[str] = Counter()
    for rid in range(n):
        if rid % 7 == 3:
            continue
        for word in (f"w{value_of(rid) % 97}", f"v{rid % 13}"):
            words[word] += 1
            line = f"{word},{words[word]}"
            out[line] = line
    return out


def identity(line: str, mode: str) -> str:
    """The unique id of an output line: the record id (keyed) or the line itself (wordcount)."""
    return line.split(",", 1)[0] if mode == "keyed" else line


def key_and_count(line: str, mode: str) -> tuple[str, int]:
    parts = line.split(",")
    return (parts[1], int(parts[2])) if mode == "keyed" else (parts[0], int(parts[1]))


def compare(lines: list[str], oracle: dict[str, str], mode: str) -> dict[str, int]:
    """Count lost, duplicated, unexpected, wrong-value and non-prefix records.

    ``not_prefix`` counts keys whose committed running counts are not exactly
    ``1..m``: committed output must be a prefix of every key's sequence.
    """
    ids = Counter(identity(line, mode) for line in lines)
    counts_by_key: dict[str, list[int]] = defaultdict(list)
    wrong = 0
    for line in lines:
        want = oracle.get(identity(line, mode))
        if want is not None and want != line:
            wrong += 1
        key, count = key_and_count(line, mode)
        counts_by_key[key].append(count)
    not_prefix = sum(
        1 for counts in counts_by_key.values() if sorted(counts) != list(range(1, len(counts) + 1))
    )
    return {
        "committed": len(lines),
        "expected": len(oracle),
        "duplicates": sum(c - 1 for c in ids.values() if c > 1),
        "lost": sum(1 for i in oracle if i not in ids),
        "unexpected": sum(1 for i in ids if i not in oracle),
        "wrong_value": wrong,
        "not_prefix": not_prefix,
    }
