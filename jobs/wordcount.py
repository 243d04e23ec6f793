"""Word count: the running count of every word in a folder of text files.

Run it with ``onceflow run jobs/wordcount.py``; kill it at any moment and run
the same command again: the committed output in ``out/wordcount`` equals an
uninterrupted run's. Each output line is ``word,count`` with the running count,
so a word's last line holds its total.
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
