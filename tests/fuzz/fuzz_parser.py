#!/usr/bin/env python3
"""The atheris fuzzer of the C batch parser, run by scripts/fuzz, which builds the extension
it fuzzes (:data:`EXTENSION`: AddressSanitizer and UndefinedBehaviorSanitizer, with
libFuzzer's coverage) and sets up the environment it needs.

    tests/fuzz/fuzz_parser.py [LIBFUZZER ARGUMENTS...]

The arguments go to libFuzzer (corpus directories, -runs, -max_total_time, -merge...), which
runs this file again, in the same environment, for a merge. Every input goes through
tests/fuzz/harness.py's check: a disagreement between the C and its Python definition is an
uncaught exception, and a memory error, undefined behaviour or a leak in the C aborts the
run; either way libFuzzer writes the input to its artifact.

The Python definition and the harness are instrumented too, so that the fuzzer also steers
towards every branch of the Python side (orjson's reasons to refuse a text among them).
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

# Imported uninstrumented, before the modules below: atheris, and what the harness needs.
import aiokafka.structs  # noqa: F401
import atheris
import orjson  # noqa: F401

with atheris.instrument_imports(include=["tables._speedups_py", "tests.fuzz.harness"]):
    from tests.fuzz import harness

SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")
EXTENSION = Path(__file__).parents[2] / "build" / "fuzz" / f"_speedups{SUFFIX}"
"""scripts/fuzz's build of tables/_speedups.c, apart from the normal build in tables/."""


def main() -> None:
    if not EXTENSION.exists():
        sys.exit(f"{EXTENSION} is not built: run scripts/fuzz")
    c = harness.extension(str(EXTENSION))
    atheris.Setup(sys.argv, lambda data: harness.check(c, data))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
