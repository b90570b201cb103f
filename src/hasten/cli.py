"""The ``hasten`` console command; each area adds its own subcommands."""

from __future__ import annotations

import argparse
import sys

from hasten import __version__


def build_parser() -> argparse.ArgumentParser:
    from hasten.attn.cli import add_attn_commands
    from hasten.serve.cli import add_serve_commands
    from hasten.toyvideo.cli import add_toyvideo_commands
    from hasten.video.cli import add_calibrate_command, add_video_commands

    parser = argparse.ArgumentParser(
        prog="hasten", description="Fast inference for generative models."
    )
    parser.add_argument("--version", action="version", version=f"hasten {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_attn_commands(sub)
    add_serve_commands(sub)
    add_toyvideo_commands(sub)
    add_video_commands(sub)
    add_calibrate_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError) as err:
        # Bad input from the command line: say what was wrong without a traceback.
        print(f"hasten: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
