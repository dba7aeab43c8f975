"""Long fuzz run of every codec decoder (not a test): >= 100,000 payloads per decoder.

    python bench/codecs_fuzz.py                     # 100,000 per decoder, 2 decoders at a time
    python bench/codecs_fuzz.py --examples 20000 --jobs 4 --only positions sparse

Runs tests/codecs/test_fuzz.py (hypothesis, derandomize=True, per-example deadline,
tracemalloc peak check, faulthandler watchdog) with FEDSQUEEZE_FUZZ_EXAMPLES set, one pytest
process per decoder, and prints the number of payloads each decoder survived.  The O(n)
"-bigN" cases (2,000,000-element expectations) run 0.2 x the count.  Takes about 1-2 ms per
payload per core.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DECODERS = ["dense", "quant", "ternary", "positions", "sparse", "masked", "lowrank", "entropy",
            "positions-bigN", "sparse-bigN"]


def run_one(name: str, examples: int) -> tuple[str, int, str, float, str]:
    env = dict(os.environ, FEDSQUEEZE_FUZZ_EXAMPLES=str(examples))
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:warnings",
                        "-p", "no:cacheprovider",
                        f"tests/codecs/test_fuzz.py::test_decoder_survives_fuzz[{name}]"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    out = p.stdout + p.stderr
    m = re.search(rf"fuzz {re.escape(name)}: (\d+) payloads, worst peak (\d+) B", out)
    count = int(m.group(1)) if m else 0
    status = "pass" if p.returncode == 0 else "FAIL"
    return (name, count, status, time.perf_counter() - t,
            (m.group(2) if m else "?") if status == "pass" else out[-3000:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=100_000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=None, choices=DECODERS)
    args = ap.parse_args(argv)
    names = args.only or DECODERS
    fails = 0
    print(f"{'decoder':<16}{'payloads':>10}{'status':>8}{'seconds':>9}  worst peak (B)")
    with ThreadPoolExecutor(args.jobs) as ex:
        for name, count, status, secs, info in ex.map(lambda n: run_one(n, args.examples), names):
            print(f"{name:<16}{count:>10}{status:>8}{secs:>9.0f}  "
                  f"{info if status == 'pass' else ''}", flush=True)
            if status != "pass":
                fails += 1
                print(info, file=sys.stderr)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
