"""Command line: thin commands over the library.

A ``PublisherError`` becomes ``Error: <message>`` and exit status 1; usage errors exit 2;
tracebacks only with ``--debug``.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from publisher import __version__
from publisher.config import Config, load_config
from publisher.errors import PublisherError
from publisher.logs import configure_logging, redact_text

F = TypeVar("F", bound=Callable[..., Any])

PROGRESS_MIN_FILES = 500


def common_options(function: F) -> F:
    """-c/--config, -v/-q and --debug, shared by every command."""
    options = [
        click.option("-c", "--config", "config_path",
                     type=click.Path(dir_okay=False, path_type=Path),
                     help="TOML config file (default: built-in defaults)."),
        click.option("-v", "--verbose", count=True, help="More detail (repeat for debug logs)."),
        click.option("-q", "--quiet", is_flag=True, help="Only errors."),
        click.option("--debug", is_flag=True, help="Show tracebacks and debug logs."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


class Context:
    def __init__(self, config_path: Path | None, verbose: int, quiet: bool, debug: bool,
                 log_format: str = "text", default_level: int = logging.WARNING) -> None:
        self.config_path = config_path
        self.quiet = quiet
        self.verbose = verbose
        self.debug = debug
        level = logging.DEBUG if debug or verbose > 1 else logging.INFO if verbose else (
            logging.ERROR if quiet else default_level
        )
        configure_logging(level, log_format)

    def config(self, **overrides: Any) -> Config:
        return load_config(self.config_path, overrides=overrides)

    def echo(self, message: str = "", err: bool = False) -> None:
        if not self.quiet or err:
            click.echo(redact_text(message), err=err)


@contextmanager
def reported_errors(debug: bool) -> Iterator[None]:
    """Library errors to ``Error: ...`` and exit 1; tracebacks only with --debug."""
    try:
        yield
    except PublisherError as exc:
        if debug:
            raise
        click.echo(f"Error: {redact_text(str(exc))}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        raise  # usage errors and the like: click reports them (exit 2)
    except Exception as exc:  # a bug: still one line, the traceback on request
        if debug:
            raise
        click.echo(
            f"Error: unexpected {type(exc).__name__}: {redact_text(str(exc))} "
            "(run again with --debug for the traceback, and please report it)",
            err=True,
        )
        sys.exit(1)


def command(function: F, default_level: int = logging.WARNING) -> F:
    """Wrap a command body: set up logging and turn library errors into exit statuses."""

    @functools.wraps(function)
    def wrapper(config_path: Path | None, verbose: int, quiet: bool, debug: bool,
                **kwargs: Any) -> Any:
        log_format = kwargs.pop("log_format", "text")
        ctx = Context(config_path, verbose, quiet, debug, log_format, default_level)
        with reported_errors(debug):
            return function(ctx, **kwargs)

    return common_options(wrapper)  # type: ignore[return-value]


def service_command(function: F) -> F:
    """Like ``command``, but a service logs its normal events (INFO) unless told -q."""
    return command(function, default_level=logging.INFO)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="publisher")
def cli() -> None:
    """Curated news articles to per-topic RSS/Atom feeds and Telegram channel posts.

    \b
    Quick start:
      publisher build --articles seeds      # feeds/ from the sample articles
      publisher push -c config.toml         # post new articles to Telegram
      publisher run -c config.toml          # both, on a schedule, as a service
    """


@cli.command()
@click.option("--articles", type=click.Path(file_okay=False, path_type=Path),
              help="Article folder (overrides articles.dir).")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path),
              help="Feed folder (overrides feeds.dir).")
@command
def build(ctx: Context, articles: Path | None, output: Path | None) -> None:
    """Load and select articles and write RSS and Atom feeds per topic and for all.

    \b
    Example:
      publisher build -c config.toml
      publisher build --articles seeds --output feeds
    """
    from publisher.pipeline import build as run_build

    config = ctx.config(**_path_overrides(articles, output))
    with _progress(ctx, config) as progress:
        report = run_build(config, progress=progress)
    for line in (*report.corpus.problems, *report.corpus.notices):
        ctx.echo(str(line), err=True)
    summary = report.summary()
    written = (
        f"wrote {summary['written']} files ({summary['unchanged']} unchanged) to"
        if report.feeds is not None
        else "the feeds are current in"
    )
    warned = len(report.corpus.notices)
    ctx.echo(
        f"Read {summary['files']} files ({summary['bad']} bad, "
        + (f"{warned} with warnings, " if warned else "")
        + f"{summary['parsed']} parsed), "
        f"selected {summary['selected']} articles in {summary['topics']} topics; "
        f"{written} {config.feeds.dir} in {summary['seconds']:.2f} s."
    )


def _path_overrides(articles: Path | None, output: Path | None) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if articles is not None:
        overrides["articles.dir"] = str(articles.resolve())
    if output is not None:
        overrides["feeds.dir"] = str(output.resolve())
    return overrides


@contextmanager
def _progress(ctx: Context, config: Config) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on a terminal for long loads; nothing otherwise."""
    if ctx.quiet or not sys.stderr.isatty():
        yield None
        return
    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if total < PROGRESS_MIN_FILES:
            return
        if "bar" not in state:
            state["bar"] = click.progressbar(length=total, label="Loading", file=sys.stderr)
            state["bar"].__enter__()
        state["bar"].update(1)

    try:
        yield update
    finally:
        if "bar" in state:
            state["bar"].__exit__(None, None, None)


@cli.command()
@click.option("--articles", type=click.Path(file_okay=False, path_type=Path),
              help="Article folder (overrides articles.dir).")
@command
def check(ctx: Context, articles: Path | None) -> None:
    """Validate every article file like a linter: one line per bad file; exit 1 if any.

    \b
    Example:
      publisher check -c config.toml
      publisher check --articles seeds
    """
    from publisher.pipeline import load_and_select

    config = ctx.config(**_path_overrides(articles, None))
    with _progress(ctx, config) as progress:
        loaded = load_and_select(config, progress=progress)
    for line in sorted((*loaded.load.problems, *loaded.load.notices),
                       key=lambda line: str(line.path)):
        click.echo(str(line))
    bad = len(loaded.load.problems)
    warned = len(loaded.load.notices)
    ctx.echo(
        f"{loaded.load.files_read} files checked: {bad} bad, "
        + (f"{warned} with warnings, " if warned else "")
        + f"{len(loaded.selected)} selected for publishing.",
        err=bool(bad),
    )
    if bad:
        sys.exit(1)


@cli.command()
@click.option("--dry-run", is_flag=True,
              help="Print what would be posted; send and change nothing.")
@command
def push(ctx: Context, dry_run: bool) -> None:
    """Post new selected articles to Telegram, each exactly once per chat.

    The bot token comes from the environment variable TELEGRAM_BOT_TOKEN (or
    telegram.token_file). Exit status 1 when a chat failed or a message was refused.

    \b
    Example:
      TELEGRAM_BOT_TOKEN=123:abc publisher push -c config.toml
      publisher push -c config.toml --dry-run
    """
    from publisher import pipeline
    from publisher.messages import format_for_dry_run

    config = ctx.config()
    if dry_run:
        plan = pipeline.dry_run(config)
        for item in plan.items:
            click.echo(format_for_dry_run(item.message, item.chat_id))
            click.echo()
        click.echo(f"Dry run: {len(plan.items)} messages would be sent; nothing was sent.")
        return
    import asyncio

    outcome = asyncio.run(pipeline.push(config))
    for problem in outcome.corpus.problems:
        ctx.echo(str(problem), err=True)
    summary = outcome.summary()
    ctx.echo(
        f"Sent {summary['sent']}, failed {summary['failed']}, uncertain {summary['uncertain']}, "
        f"skipped {summary['skipped']} ({summary['new']} new in the ledger) "
        f"in {summary['seconds']:.2f} s."
    )
    for error in outcome.report.errors.values():
        click.echo(f"Error: {redact_text(error)}", err=True)
    if not outcome.report.ok:
        sys.exit(1)


@cli.command()
@command
def status(ctx: Context) -> None:
    """Show the last build and push, ledger counts per chat, recent errors and uncertain posts.

    \b
    Example:
      publisher status -c config.toml
    """
    from publisher.status import render_status

    click.echo(render_status(ctx.config(), ctx.config_path))


@cli.command()
@click.argument("article_ids", nargs=-1)
@click.option("--chat", help="Only this chat.")
@click.option("--failed", "state", flag_value="failed", help="Requeue failed posts instead.")
@click.option("--uncertain", "state", flag_value="uncertain", default=True,
              help="Requeue posts whose delivery is uncertain (the default).")
@click.option("--all", "everything", is_flag=True, help="Every post in that state.")
@command
def resend(ctx: Context, article_ids: tuple[str, ...], chat: str | None, state: str,
           everything: bool) -> None:
    """Queue uncertain (or failed) posts again, after you checked the channel.

    \b
    Example:
      publisher resend -c config.toml urn:uuid:583f497a-565f-59e8-bf35-c074cf266bce
      publisher resend -c config.toml --all --chat @mychannel
    """
    from publisher.state import open_store

    if not article_ids and not everything:
        raise click.UsageError("name article ids, or pass --all")
    config = ctx.config()
    # One UPDATE, safe beside a running service: no instance lock needed.
    store = open_store(config.state.url)
    try:
        count = store.requeue(state, chat, list(article_ids))
    finally:
        store.close()
    ctx.echo(f"Requeued {count} {state} posts; the next push sends them.")


@cli.command()
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Log line format on stderr.")
@service_command
def run(ctx: Context) -> None:
    """Run as a service: build and push on a schedule and whenever article files change.

    Stops cleanly on SIGTERM or SIGINT; SIGHUP reloads the config.

    \b
    Example:
      TELEGRAM_BOT_TOKEN=123:abc publisher run -c /etc/publisher/config.toml
    """
    from publisher.service import run_service

    sys.exit(run_service(ctx.config_path))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port to listen on (0: any free port).")
@service_command
def serve(ctx: Context, host: str, port: int) -> None:
    """Serve the feeds folder over HTTP for feed readers; builds nothing.

    Serves index.html, feeds.opml and every feed with its Content-Type, ETag, Last-Modified
    (304 when unchanged), gzip and Cache-Control. Stops cleanly on SIGINT or SIGTERM.

    \b
    Example:
      publisher build -c config.toml && publisher serve -c config.toml --port 8080
    """
    import signal
    import threading

    from publisher.server import start_server
    from publisher.service import interval_seconds

    config = ctx.config()
    if not config.feeds.dir.is_dir():
        ctx.echo(f"Warning: {config.feeds.dir} does not exist yet; run publisher build.",
                 err=True)
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    server = start_server(listen, feeds_dir=config.feeds.dir,
                          cache_seconds=interval_seconds(config.schedule.build))
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        ctx.echo(f"Serving {config.feeds.dir} at {server.url}/ (Ctrl+C to stop)")
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.close()
    ctx.echo("Stopped.")


def main() -> None:
    cli(prog_name="publisher")


if __name__ == "__main__":  # pragma: no cover
    main()
