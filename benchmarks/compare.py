"""Print two benchmark runs side by side: ``python -m benchmarks.compare OLD.json NEW.json``.

Absolute times move with the machine's load, so the column to read is each
variant's ratio to its case's baseline, measured in the same suite run; the
last column says how that ratio moved (new ÷ old).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _variants(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(case["name"], name): row for case in report["cases"] for name, row in case["variants"].items()}


def _fmt(value: float | None, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "—"


def compare(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Return a Markdown table of both runs' ratios and throughputs, and both target tables."""
    lines = [
        "| case | variant | old ratio | new ratio | new ÷ old | old M rec/s | new M rec/s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    before, after = _variants(old), _variants(new)
    for key in [k for k in after if k in before] + [k for k in after if k not in before]:
        o, n = before.get(key, {}), after[key]
        moved = n["ratio"] / o["ratio"] if o.get("ratio") and n.get("ratio") else None
        lines.append(
            f"| {key[0]} | {n.get('label', key[1])} | {_fmt(o.get('ratio'), '.2f')} | "
            f"{_fmt(n.get('ratio'), '.2f')} | {_fmt(moved, '.2f')} | "
            f"{_fmt((o.get('throughput') or 0) / 1e6 or None, '.2f')} | "
            f"{_fmt((n.get('throughput') or 0) / 1e6 or None, '.2f')} |"
        )
    lines += ["", "| target | goal | old | new |", "| --- | --- | ---: | ---: |"]
    old_targets = {t["target"]: t for t in old.get("targets", [])}
    for t in new.get("targets", []):
        was = old_targets.get(t["target"], {}).get("shown", "—")
        lines.append(f"| {t['target']} | {t['goal']} | {was} | {t['shown']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    args = parser.parse_args(argv)
    print(compare(json.loads(args.old.read_text()), json.loads(args.new.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
