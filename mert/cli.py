"""``mert <command>``: one CLI over the pipeline's stages (argument parsing only).

Each subpackage registers its subcommands in its own ``commands.py`` (listed in
``COMMAND_MODULES``) with a ``register(subparsers)`` function that must stay cheap to import;
the heavy imports happen inside the handlers. Handlers return an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from mert.params import ParamsError

COMMAND_MODULES = (
    "mert.data.commands",  # demo-corpus, ingest
    "mert.probe.commands",  # probe
    "mert.teachers.commands",  # label
    "mert.model.commands",  # extract
    "mert.train.commands",  # pretrain
    "mert.ablation.commands",  # ablation label / pretrain / probe / report
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mert", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.handler(args) or 0)
    except ParamsError as e:
        print(f"mert {args.command}: invalid parameters: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        if args.verbose:
            raise
        print(f"mert {args.command}: error: {e}", file=sys.stderr)
        return 1


def add_params_arg(p: argparse.ArgumentParser) -> None:
    """The ``--params`` option every stage command takes."""
    p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s; missing = defaults)")


if __name__ == "__main__":
    sys.exit(main())
