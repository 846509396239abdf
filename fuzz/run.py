"""Coverage-guided fuzzing campaigns with atheris (libFuzzer) over the targets of the test suite.

The targets are ``tests/fuzz/targets.py``'s, the same the bounded property tests run in
``make test``: here each runs for minutes or hours with ``inzwa_voice`` instrumented, so
libFuzzer keeps the inputs that reach new code and mutates those. Usage::

    .venv/bin/python fuzz/run.py                       # every target, 60 s each
    .venv/bin/python fuzz/run.py --seconds 3600 sip_sdp twilio_message

Each target starts from its checked-in seeds (``fuzz/corpus/<target>/``, never written to) and
a working corpus in ``var/fuzz/corpus/<target>/`` that grows across runs. An input that raises
anything but the target's documented errors is a crash: libFuzzer writes it to
``var/fuzz/crashes/`` and this script exits 1. Replay one with
``.venv/bin/python fuzz/run.py --replay FILE TARGET``; a fix gets a test (and the input a place
in the seed corpus).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "var" / "fuzz"
SEEDS = ROOT / "fuzz" / "corpus"


def _one(target_name: str, libfuzzer_args: list[str]) -> None:
    """Fuzz one target in this process (libFuzzer exits the process when the run ends)."""
    import atheris

    sys.path.insert(0, str(ROOT))
    with atheris.instrument_imports(include=["inzwa_voice"]):
        from tests.fuzz.targets import TARGETS

    target = TARGETS[target_name]
    work = WORK / "corpus" / target_name
    work.mkdir(parents=True, exist_ok=True)
    (WORK / "crashes").mkdir(parents=True, exist_ok=True)
    argv = [
        sys.argv[0],
        f"-artifact_prefix={WORK / 'crashes'}/{target_name}-",
        *libfuzzer_args,
        str(work),
        str(SEEDS / target_name),
    ]
    atheris.Setup(argv, target.check)
    atheris.Fuzz()


def _replay(path: Path, target_name: str) -> None:
    """Run one saved input without libFuzzer, so its traceback shows what broke."""
    sys.path.insert(0, str(ROOT))
    from tests.fuzz.targets import TARGETS

    TARGETS[target_name].check(path.read_bytes())
    print(f"{path}: {target_name} refused or accepted it cleanly")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="targets to fuzz (default: all)")
    parser.add_argument("--seconds", type=int, default=60, help="time per target")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--replay", type=Path, help="run this saved input through the one target named")
    args, libfuzzer_args = parser.parse_known_args()
    if args.one:
        _one(args.one, libfuzzer_args)
        return 0
    sys.path.insert(0, str(ROOT))
    from tests.fuzz.targets import TARGETS

    if args.replay:
        _replay(args.replay, args.targets[0])
        return 0
    names = args.targets or sorted(TARGETS)
    unknown = set(names) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; known: {', '.join(sorted(TARGETS))}")
    failed = []
    for name in names:
        print(f"== {name}: {args.seconds} s", flush=True)
        limits = [f"-max_total_time={args.seconds}", "-timeout=30", "-rss_limit_mb=3072", "-print_final_stats=1"]
        if subprocess.run([sys.executable, __file__, "--one", name, *limits], check=False).returncode:
            failed.append(name)
    print(f"crashed: {', '.join(failed)} (inputs in {WORK / 'crashes'})" if failed else "no crashes", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
