"""Settings for the whole suite.

Under CI (``CI`` set, as on every CI service) randomised tests are repeatable, so that a red run
is about the change it tests: hypothesis draws its examples from a fixed seed, and the raw-socket
fuzzer (tests/hostile/test_fuzz.py) starts from a fixed seed unless told another. Elsewhere both
explore afresh on every run; hypothesis prints how to replay a failure, the fuzzer its seed.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
