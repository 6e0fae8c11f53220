"""kdumpd's own fuzz suite: ``make fuzz`` (``python -m tests.fuzz``); a short run of
every target is part of ``make test`` (``tests/unit/test_fuzz.py``)."""
