"""``jobs/wordcount.py`` written as map → reduce → map: four Python calls per word.

The end-to-end benchmark runs it beside the job in ``jobs/`` (two calls per
word) so the table shows how much of a job's time is its own functions.
"""

from __future__ import annotations

from onceflow import FileSink, FileSource, Job


def build(input: str = "data/words", output: str = "out/wordcount") -> Job:
    job = Job("wordcount")
    (
        job.source(FileSource(input), name="read", uid="read")
        .flat_map(str.split, name="split")
        .map(lambda word: (word.lower(), 1), name="pair")
        .key_by(lambda pair: pair[0])
        .reduce(lambda a, b: (a[0], a[1] + b[1]), name="count", uid="count")
        .map(lambda pair: f"{pair[0]},{pair[1]}", name="format")
        .sink(FileSink(output), name="write", uid="write")
    )
    return job
