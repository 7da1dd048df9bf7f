"""The command line: each command parses its options and hands off; no logic lives here."""

from __future__ import annotations

import sys

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kling-batch")
def cli() -> None:
    """Render batches of Kling O3 videos from manifests kept in version control."""


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8765, show_default=True, type=int, help="Port (0 picks a free one).")
@click.option("--api-key", default="sk-empiriolabs-emulator", show_default=True,
              help="The one API key the emulator accepts.")
@click.option("--time-scale", default=1.0, show_default=True, type=float,
              help="Multiply every modelled duration (0.01 runs a hundred times faster).")
@click.option("--rpm", default=50, show_default=True, type=int,
              help="Per-account requests per minute before 429 (0 disables the limit).")
@click.option("--credits", default=None, type=str, help="Account balance in USD (default: unlimited).")
@click.option("--fault", "faults", multiple=True, metavar="SPEC",
              help="Inject a fault, e.g. 5xx=0.1, storm=30, drop=0.05 (repeatable).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for faults and jitter.")
def emulator(host: str, port: int, api_key: str, time_scale: float, rpm: int,
             credits: str | None, faults: tuple[str, ...], seed: int) -> None:
    """Serve a local emulator of the EmpirioLabs API."""
    from kling_batch.emulator.server import serve

    serve(host=host, port=port, api_key=api_key, time_scale=time_scale, rpm=rpm,
          credits=credits, faults=list(faults), seed=seed)


def main() -> None:
    """Console-script entry point."""
    sys.exit(cli.main(prog_name="kling-batch", standalone_mode=True))
