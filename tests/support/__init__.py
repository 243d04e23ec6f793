"""Test support shared by the test suites: the chaos harness, plain-Python references, job fixtures.

* ``chaos``: run ``python -m onceflow run`` in its own session, kill -9 it at
  random times or at named crash points, rerun, and collect figures.
* ``oracles``: the input and expected output of the chaos counting job.
* ``windows_reference``: out-of-order event logs with margins, and the windows
  they must produce.
* ``jobs/``: job files the chaos tests run (``JOBS`` is their folder).
"""
