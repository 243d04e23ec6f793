"""Nexmark on onceflow: a seeded event generator, the queries as jobs, and plain-Python baselines.

``generator`` writes persons, auctions and bids to CSV files; ``queries``
builds each query as a :class:`onceflow.Job` over those files (the tests and
the benchmark run the same definitions); ``plain`` computes each query's result
in a plain Python loop over the same files, the benchmark's baseline.
"""
