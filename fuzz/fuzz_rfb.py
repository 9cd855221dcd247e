"""atheris entry point: `python fuzz/fuzz_rfb.py [libFuzzer flags] CORPUS...` (see run.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Everything imported in this block (vncaudit.rfb, .probe, .models via harness) gets coverage
# instrumentation.
with atheris.instrument_imports():
    import harness


def main() -> None:
    atheris.Setup(sys.argv, harness.check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
