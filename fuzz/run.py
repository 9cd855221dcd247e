"""Run the atheris fuzzer for N seconds: `python fuzz/run.py --seconds 600`.

Seeds come from `fuzz/corpus/` (real transcripts from `tests/transcripts/` plus hand-made hostile
streams; `--make-seeds` rewrites them). New inputs found by a run go to a work corpus outside the
repository (default `$TMPDIR/vncaudit-fuzz/corpus`, kept between runs) and crashes to
`fuzz/crashes/` (git-ignored). Minimise a crash, copy it to `fuzz/regressions/`, and
`tests/test_rfb_fuzz.py` replays it forever. Ends with one summary line: execs, seconds, rate.
Needs atheris (the `fuzz` optional dependency group).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SEEDS = HERE / "corpus"
CRASHES = HERE / "crashes"


def _u32(*values: int) -> bytes:
    return struct.pack(f">{len(values)}I", *values)


def _init(name: bytes = b"desk") -> bytes:
    pf = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
    return struct.pack(">HH", 640, 480) + pf + _u32(len(name)) + name


def hand_made_seeds() -> dict[str, bytes]:
    """Hostile streams (no prefix: flags 0, seed 0, then the server bytes)."""
    b38 = b"RFB 003.008\n"
    cap = struct.pack(">I4s8s", 2, b"STDV", b"VNCAUTH_")
    return {
        "type0-in-list": b38 + bytes([3, 1, 0, 2]),
        "count255-garbage": b38 + b"\xff" + bytes(range(255, 0, -1)),
        "reason-huge": b38 + b"\x00" + _u32(0xFFFFFFFF),
        "vencrypt-255": b38 + b"\x01\x13\x00\x02\x00\xff" + _u32(*range(1000, 1255)),
        "tight-huge": b38 + b"\x01\x10" + _u32(0x7FFFFFFF),
        "tight-auth": b"RFB 003.007\n" + b"\x01\x10" + _u32(0, 1) + cap + _u32(1),
        "name-4g": b38 + b"\x01\x01" + _u32(0) + _init()[:20] + _u32(0xFFFFFFFF),
        "none-38": b38 + b"\x01\x01" + _u32(0) + _init(b"fuzz"),
        "none-33": b"RFB 003.003\n" + _u32(1) + _init(),
        "tls18": b38 + b"\x01\x12" + b"\x02\x01\x02" + _u32(0) + _init(),
        "every-type": b38 + bytes([40, *range(1, 41)]) + _u32(0) + _init(),
        "result-failed": b38 + b"\x01\x01" + _u32(1) + _u32(6) + b"denied",
        "ultra-3.14": b"RFB 003.014\n" + _u32(0xFFFFFFFA) + bytes(8),
        "apple": b"RFB 003.889\n" + bytes([3, 30, 33, 36]),
        "repeater": b"RFB 000.000\n",
        "http": b"HTTP/1.1 400 Bad Request\r\n\r\n",
    }


def transcript_seeds() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for path in sorted((ROOT / "tests" / "transcripts").glob("*.json")):
        doc = json.loads(path.read_text())
        stream = b"".join(bytes.fromhex(e["hex"]) for e in doc["exchanges"] if e["dir"] == "s2c")
        out[path.stem] = stream
    return out


def make_seeds() -> int:
    SEEDS.mkdir(exist_ok=True)
    seeds = {**transcript_seeds(), **hand_made_seeds()}
    for name, stream in seeds.items():
        (SEEDS / name).write_bytes(b"\x00\x00" + stream)
        if len(stream) < 300:  # the same stream cut into small chunks (fragmentation seed 7)
            (SEEDS / f"{name}.frag").write_bytes(b"\x00\x07" + stream)
    return len(seeds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="total fuzzing time")
    parser.add_argument("--corpus", type=Path,
                        default=Path(tempfile.gettempdir()) / "vncaudit-fuzz" / "corpus",
                        help="work corpus (new inputs are written here)")
    parser.add_argument("--max-len", type=int, default=4096)
    parser.add_argument("--make-seeds", action="store_true", help="rewrite fuzz/corpus and exit")
    args = parser.parse_args(argv)
    if args.make_seeds or not SEEDS.exists():
        print(f"wrote {make_seeds()} seed streams to {SEEDS}")
        if args.make_seeds:
            return 0
    if importlib.util.find_spec("atheris") is None:
        print("atheris is not installed: pip install -e '.[fuzz]'  (atheris==3.0.0)",
              file=sys.stderr)
        return 2
    args.corpus.mkdir(parents=True, exist_ok=True)
    CRASHES.mkdir(exist_ok=True)
    before = set(CRASHES.iterdir())
    cmd = [
        sys.executable, str(HERE / "fuzz_rfb.py"),
        f"-max_total_time={args.seconds}", f"-max_len={args.max_len}",
        f"-artifact_prefix={CRASHES}/", "-print_final_stats=1", "-timeout=10",
        "-rss_limit_mb=2048", str(args.corpus), str(SEEDS),
    ]
    print("running:", " ".join(cmd), flush=True)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONHASHSEED": "0"})
    execs = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        if m := re.search(r"stat::number_of_executed_units:\s*(\d+)", line):
            execs = int(m.group(1))
        elif m := re.match(r"#(\d+)\s", line):
            execs = max(execs, int(m.group(1)))
    rc = proc.wait()
    elapsed = time.monotonic() - started
    crashes = sorted(set(CRASHES.iterdir()) - before)
    corpus = sum(1 for _ in args.corpus.iterdir())
    for crash in crashes:
        digest = hashlib.sha1(crash.read_bytes()).hexdigest()[:12]
        print(f"CRASH {crash} sha1:{digest} - replay: python {HERE / 'fuzz_rfb.py'} {crash}")
    print(f"fuzz summary: {execs} execs in {elapsed:.0f} s ({execs / max(elapsed, 1):.0f}/s), "
          f"work corpus {corpus} inputs, {len(crashes)} crash(es), exit {rc}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
