"""The `lion-hf` command line."""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys


def _info(args: argparse.Namespace) -> int:
    import torch
    import transformers

    import lion_hf

    print(f"lion-hf       {lion_hf.__version__}")
    print(f"python        {platform.python_version()}")
    print(f"torch         {torch.__version__}")
    print(f"transformers  {transformers.__version__}")
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        print(f"cuda          {torch.version.cuda} ({names})")
    else:
        print("cuda          not available (CPU only)")
    triton = "installed" if importlib.util.find_spec("triton") is not None else "not installed"
    print(f"triton        {triton}")
    print(f"attention     forms: {', '.join(lion_hf.ATTENTION_FORMS)} (PyTorch)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lion-hf", description="LION bidirectional linear-attention models for the Hugging Face stack."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = commands.add_parser("info", help="versions, devices and available attention backends")
    info.set_defaults(run=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
