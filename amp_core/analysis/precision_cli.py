"""The command line of amp_core.precision: one resolution explained, or the whole truth table.

python -m amp_core.precision --precision 16-mixed --use-amp true --cuda-available true --use-gpu true
python -m amp_core.precision --table [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from amp_core.precision import InvalidPrecisionError, format_table, resolve_precision, truth_table

DESCRIPTION = "Which precision does a run really train in, and why."


_CLI_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_CLI_USE_AMP = {**_CLI_BOOLS, "none": None}


def _cli_choice(table: dict) -> Any:
    def parse(text: str):
        if text.lower() not in table:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(table)}, got {text!r}")
        return table[text.lower()]

    return parse


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _OneLineParser(prog="python -m amp_core.precision", description=DESCRIPTION)
    parser.add_argument("--precision", help="requested Trainer precision, e.g. 16-mixed, bf16, 32")
    parser.add_argument("--use-amp", type=_cli_choice(_CLI_USE_AMP), default=None, help="none, true or false")
    parser.add_argument("--cuda-available", type=_cli_choice(_CLI_BOOLS), default=None, help="default: this machine")
    parser.add_argument("--use-gpu", type=_cli_choice(_CLI_BOOLS), default=None, help="default: --cuda-available")
    parser.add_argument("--table", action="store_true", help="print the truth table over every combination")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    if args.table == (args.precision is not None):
        parser.error("give either --precision or --table")

    try:
        if args.table:
            rows = truth_table()
            print(json.dumps([row.as_dict() for row in rows], indent=1) if args.json else format_table(rows))
            return 0
        if args.cuda_available is None:
            import torch

            args.cuda_available = torch.cuda.is_available()
        use_gpu = args.cuda_available if args.use_gpu is None else args.use_gpu
        resolution = resolve_precision(args.precision, args.use_amp, args.cuda_available, use_gpu)
    except InvalidPrecisionError as err:
        parser.error(str(err))
    print(json.dumps(resolution.as_dict(), indent=1) if args.json else resolution)
    return 0


if __name__ == "__main__":
    sys.exit(main())
