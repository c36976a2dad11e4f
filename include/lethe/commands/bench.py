"""`lethe bench NAME [ARGS...]`: run a benchmark scenario from bench/ (each measures Lethe beside its anchor)."""

from __future__ import annotations

import argparse
import importlib.util

from lethe.config import PROJECT_DIR

BENCH_DIR = PROJECT_DIR / "bench"


def scenarios() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.stem.startswith("_"))


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("bench", help="run a benchmark scenario from bench/ and print its results")
    p.add_argument("scenario", help="scenario name, or 'list'")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the scenario (see `lethe bench NAME --help`)")
    p.set_defaults(handler=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from lethe.cli import CommandError

    names = scenarios()
    if args.scenario == "list":
        print("\n".join(names))
        return 0
    if args.scenario not in names:
        raise CommandError(f"no benchmark {args.scenario!r} in {BENCH_DIR}; available: {', '.join(names)}")
    spec = importlib.util.spec_from_file_location(f"bench_{args.scenario}", BENCH_DIR / f"{args.scenario}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.main(args.args) or 0)
