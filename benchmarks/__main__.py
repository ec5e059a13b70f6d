"""``python -m benchmarks [NAME] [options]``: list the benchmarks, or run one."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from types import ModuleType

import benchmarks
from benchmarks import _harness


def discover() -> dict[str, ModuleType]:
    """Every public module of the package that defines ``run(args)``, by name."""
    found: dict[str, ModuleType] = {}
    for info in sorted(pkgutil.iter_modules(benchmarks.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"benchmarks.{info.name}")
        if callable(getattr(module, "run", None)):
            found[info.name] = module
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    modules = discover()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="mmipc benchmarks: each case runs in fresh processes, against its peers, in one run.",
    )
    sub = parser.add_subparsers(dest="benchmark", metavar="NAME")
    for name, module in modules.items():
        description = getattr(module, "DESCRIPTION", "")
        child = sub.add_parser(name, help=description, description=description)
        _harness.add_common_arguments(child, name)
        add_arguments = getattr(module, "add_arguments", None)
        if add_arguments is not None:
            add_arguments(child)
    args = parser.parse_args(argv)
    if args.benchmark is None:
        print("available benchmarks (python -m benchmarks NAME [--quick] [--json PATH]):")
        for name, module in modules.items():
            print(f"  {name:<12} {getattr(module, 'DESCRIPTION', '')}")
        return 0
    return int(modules[args.benchmark].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
