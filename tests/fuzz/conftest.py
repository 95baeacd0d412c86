"""Hypothesis settings for the fuzzers (issue #14).

Profiles, chosen by BIGPERF_FUZZ (default "ci"):
  ci    a bounded example budget with a fixed seed (derandomize): `make test` runs the same
        examples every time, so a failure reproduces and the folder stays within ~60 s.
  long  many more examples from a fresh seed each run (`make fuzz`), for hunting.
The example database is off in both: nothing is written into the repo.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(database=None, deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
settings.register_profile("ci", max_examples=int(os.environ.get("BIGPERF_FUZZ_EXAMPLES", "25")),
                          derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=int(os.environ.get("BIGPERF_FUZZ_EXAMPLES", "1000")),
                          derandomize=False, **_COMMON)

_PROFILE = os.environ.get("BIGPERF_FUZZ", "ci").strip() or "ci"
if _PROFILE not in ("ci", "long"):
    raise ValueError(f"tests/fuzz: BIGPERF_FUZZ must be 'ci' or 'long', got {_PROFILE!r}")
settings.load_profile(_PROFILE)
