"""The command line: each command parses its options and hands off; no logic lives here."""

from __future__ import annotations

import sys

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kling-batch")
def cli() -> None:
    """Render batches of Kling O3 videos from manifests kept in version control."""


_FAULT_HELP = """\b
Fault SPEC: KIND=WHEN[,OPTION=VALUE]...  WHEN is a probability per matching
request (0.1 or 10%) or firstN (the first N matching requests).
  storm=SECONDS   429 + Retry-After to every /v1 request for SECONDS
                  (modelled), from at=SECONDS after start (default 0)
  5xx=WHEN        answer 500/502/503 (status=503 fixes one; 503=WHEN too)
  drop=WHEN       close the connection without a response
  ambiguous=WHEN  create (and bill) the job, then drop the answer (submits)
  truncate=WHEN   send keep=FRACTION (0.5) of a download, then close
  fail=WHEN       the job ends failed, code=content_moderation; not billed
  slow=WHEN       answer after delay=SECONDS (modelled, default 5)
on=TARGET picks requests: v1 (default), submit, poll, list, cancel, upload,
models, download, any.  Examples: --fault 5xx=0.1 --fault drop=first1,on=poll
--fault storm=30,at=60 --fault fail=0.05
"""


def _check_faults(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    from kling_batch.emulator.faults import parse_fault

    for spec in value:
        try:
            parse_fault(spec)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


@cli.command(epilog=_FAULT_HELP)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port", default=8765, show_default=True, type=int, help="Port (0 picks a free one)."
)
@click.option(
    "--api-key",
    default="sk-empiriolabs-emulator",
    show_default=True,
    help="The one API key the emulator accepts.",
)
@click.option(
    "--time-scale",
    default=1.0,
    show_default=True,
    type=float,
    help="Multiply every modelled duration (0.01 runs a hundred times faster).",
)
@click.option(
    "--rpm",
    default=50,
    show_default=True,
    type=int,
    help="Per-account requests per minute before 429 (0 disables the limit).",
)
@click.option(
    "--credits", default=None, type=str, help="Account balance in USD (default: unlimited)."
)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    metavar="SPEC",
    callback=_check_faults,
    help="Inject a fault (repeatable); syntax below.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for faults and jitter.")
@click.option(
    "--latency",
    default="realistic",
    show_default=True,
    type=click.Choice(["realistic", "zero"]),
    help="Job timing: minutes of render time, or done on submit.",
)
@click.option(
    "--poll-url",
    default="absolute",
    show_default=True,
    type=click.Choice(["absolute", "relative", "absent"]),
    help="Shape of poll_url in submit answers.",
)
@click.option(
    "--submit-status",
    default=200,
    show_default=True,
    type=click.Choice(["200", "202"]),
    help="HTTP status of an accepted submit.",
)
def emulator(
    host: str,
    port: int,
    api_key: str,
    time_scale: float,
    rpm: int,
    credits: str | None,
    faults: tuple[str, ...],
    seed: int,
    latency: str,
    poll_url: str,
    submit_status: str,
) -> None:
    """Serve a local emulator of the EmpirioLabs API."""
    from kling_batch.emulator.server import serve

    serve(
        host=host,
        port=port,
        api_key=api_key,
        time_scale=time_scale,
        rpm=rpm,
        credits=credits,
        faults=list(faults),
        seed=seed,
        latency=latency,
        poll_url=poll_url,
        submit_status=int(submit_status),
    )


def main() -> None:
    """Console-script entry point."""
    sys.exit(cli.main(prog_name="kling-batch", standalone_mode=True))
