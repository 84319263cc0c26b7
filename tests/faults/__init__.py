"""Fault-injection suite: every test here is marked `faults` and runs in the default
`python -m pytest`. `cases.py` holds what each fault should do (the tests check it, and
`python -m tests.faults.table` prints it as the README's "What happens when…" table)."""
