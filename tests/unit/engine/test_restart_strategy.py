"""RestartStrategy defaults: restarts must outlast a PostgreSQL restart (3-8 s)."""

from __future__ import annotations

from onceflow.engine.cli import build_parser
from onceflow.engine.runner import RestartStrategy

POSTGRES_RESTART_SECONDS = 8.0


def test_default_backoff_waits_longer_than_a_postgres_restart_before_giving_up() -> None:
    strategy = RestartStrategy()

    waited = sum(strategy.delay(n) for n in range(1, strategy.attempts + 1))

    assert waited > POSTGRES_RESTART_SECONDS * 2, f"{strategy} waits only {waited} s in total"
    assert strategy.delay(1) <= 1.0, "the first restart should stay quick"


def test_cli_defaults_match_the_restart_strategy_defaults() -> None:
    args = build_parser().parse_args(["run", "job.py"])

    from_cli = RestartStrategy(attempts=args.restart_attempts, initial_delay=args.restart_delay)

    assert from_cli == RestartStrategy()
