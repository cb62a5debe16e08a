"""Command line: thin commands over the library.

A ``PublisherError`` becomes ``Error: <message>`` and exit status 1; usage errors exit 2;
tracebacks only with ``--debug``. The common options (``-c``, ``-v``, ``-q``, ``--debug``) are
accepted before the command name and after it. Which config file a command uses is said once
on stderr (a service logs it), so that stdout stays what scripts parse.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from publisher import __version__
from publisher.config import Config, ConfigSource, find_config, load_config
from publisher.errors import PublisherError
from publisher.logs import configure_logging, event, redact_text
from publisher.text import plural, sent_text

if TYPE_CHECKING:
    from publisher.fanout import DmReport

F = TypeVar("F", bound=Callable[..., Any])

PROGRESS_MIN_FILES = 500
log = logging.getLogger(__name__)


def common_options(function: F) -> F:
    """-c/--config, -v/-q and --debug: on the group (before the command) and every command."""
    options = [
        click.option("-c", "--config", "config_path", type=click.Path(path_type=Path),
                     help="TOML config file (default: $PUBLISHER_CONFIG, else ./publisher.toml "
                          "or ./config.toml, else built-in defaults)."),
        click.option("-v", "--verbose", count=True, help="More detail (repeat for debug logs)."),
        click.option("-q", "--quiet", is_flag=True, help="Only errors."),
        click.option("--debug", is_flag=True, help="Show tracebacks and debug logs."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@dataclass(frozen=True)
class CommonOptions:
    config_path: Path | None = None
    verbose: int = 0
    quiet: bool = False
    debug: bool = False

    def combined(self, later: CommonOptions) -> CommonOptions:
        """These options (given before the command name) with those given after it."""
        if (self.config_path is not None and later.config_path is not None
                and self.config_path != later.config_path):
            raise click.UsageError(
                f"-c given twice, as {self.config_path} and {later.config_path}: give one"
            )
        return CommonOptions(
            config_path=later.config_path or self.config_path,
            verbose=self.verbose + later.verbose,
            quiet=self.quiet or later.quiet,
            debug=self.debug or later.debug,
        )


def _options_before_the_command() -> CommonOptions:
    context = click.get_current_context(silent=True)
    found = context.find_object(CommonOptions) if context is not None else None
    return found or CommonOptions()


class Context:
    def __init__(self, options: CommonOptions, log_format: str = "text",
                 default_level: int = logging.WARNING) -> None:
        self.config_path = options.config_path
        self.quiet = options.quiet
        self.verbose = options.verbose
        self.debug = options.debug
        # A service says which config it uses in its log; other commands on stderr.
        self.logs_config = default_level <= logging.INFO
        self._source: ConfigSource | None = None
        level = logging.DEBUG if self.debug or self.verbose > 1 else (
            logging.INFO if self.verbose else logging.ERROR if self.quiet else default_level
        )
        configure_logging(level, log_format)

    def config_source(self) -> ConfigSource:
        """The config file to use, found once and said once."""
        if self._source is None:
            self._source = find_config(self.config_path)
            self._announce(self._source)
        return self._source

    def config(self, **overrides: Any) -> Config:
        return load_config(self.config_source().path, overrides=overrides)

    def _announce(self, source: ConfigSource) -> None:
        if self.logs_config:
            if source.path is None:
                event(log, logging.WARNING, "config", file="", note=source.describe())
            else:
                event(log, logging.INFO, "config", file=source.path, source=source.origin)
        elif not self.quiet and (source.origin != "-c" or self.verbose):
            # -c names the file on the command line already: said only with -v.
            self.echo(source.describe(), err=True)

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
        options = _options_before_the_command().combined(
            CommonOptions(config_path, verbose, quiet, debug)
        )
        ctx = Context(options, log_format, default_level)
        with reported_errors(options.debug):
            return function(ctx, **kwargs)

    return common_options(wrapper)  # type: ignore[return-value]


def service_command(function: F) -> F:
    """Like ``command``, but a service logs its normal events (INFO) unless told -q."""
    return command(function, default_level=logging.INFO)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="publisher")
@common_options
@click.pass_context
def cli(context: click.Context, config_path: Path | None, verbose: int, quiet: bool,
        debug: bool) -> None:
    """Curated news articles to per-topic RSS/Atom feeds and Telegram channel posts.

    \b
    Quick start:
      publisher init mysite                 # a starter config and an articles folder
      publisher build --articles seeds      # feeds/ from the sample articles
      publisher push -c config.toml         # post new articles to Telegram
      publisher run -c config.toml          # both, on a schedule, as a service

    The config file: -c, else $PUBLISHER_CONFIG, else ./publisher.toml or ./config.toml,
    else the built-in defaults. Options go before or after the command name.
    """
    from publisher import hangup

    # A reload asked for while the service starts is held until it can be applied.
    if context.invoked_subcommand == "run":
        hangup.hold()
    else:
        hangup.release()
    context.obj = CommonOptions(config_path, verbose, quiet, debug)


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
    from publisher.session import Session

    config = ctx.config(**_path_overrides(articles, output))
    with _progress(ctx, config) as progress, Session.opened(config) as session:
        try:
            report = session.build(progress)
        except PublisherError as exc:
            from publisher.build_alerts import alert_failing_builds

            alert_failing_builds(config, session.store, str(exc))
            raise
    for line in (*report.corpus.problems, *report.corpus.notices):
        ctx.echo(str(line), err=True)
    _warn_routes(ctx, config, report.corpus.topic_slugs)
    summary = report.summary()
    written = (
        f"wrote {plural(int(summary['written']), 'file')} ({summary['unchanged']} unchanged) to"
        if report.feeds is not None
        else "the feeds are current in"
    )
    warned = len(report.corpus.notices)
    ctx.echo(
        f"Read {plural(int(summary['files']), 'file')} ({summary['bad']} bad, "
        + (f"{warned} with warnings, " if warned else "")
        + f"{summary['parsed']} parsed), "
        f"selected {plural(int(summary['selected']), 'article')} "
        f"in {plural(int(summary['topics']), 'topic')}; "
        f"{written} {config.feeds.dir} in {summary['seconds']:.2f} s."
    )


def _warn_routes(ctx: Context, config: Config, topic_slugs: Iterable[str]) -> None:
    from publisher.pipeline import route_warnings

    for warning in route_warnings(config, topic_slugs):
        ctx.echo(f"Warning: {warning}", err=True)


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
@click.option("--telegram", is_flag=True,
              help="Check the bot and every destination instead of the articles (needs the "
                   "token): can the bot post there? One line each; exit 1 on a problem.")
@command
def check(ctx: Context, articles: Path | None, telegram: bool) -> None:
    """Validate every article file like a linter: one line per bad file; exit 1 if any.

    With --telegram, ask Telegram instead (getMe, then getChat and getChatMember for every
    configured destination): one line each, exit 1 when the bot cannot post somewhere.

    \b
    Example:
      publisher check -c config.toml
      publisher check --articles seeds
      TELEGRAM_BOT_TOKEN=123:abc publisher check -c config.toml --telegram
    """
    if telegram:
        _check_telegram(ctx, ctx.config())
        return
    from publisher.pipeline import load_and_select
    from publisher.selection import topic_slug

    config = ctx.config(**_path_overrides(articles, None))
    with _progress(ctx, config) as progress:
        loaded = load_and_select(config, progress=progress)
    # mypy joins a tuple of Problems and Notices to object, hence the ignore: both have a path.
    for line in sorted((*loaded.load.problems, *loaded.load.notices),
                       key=lambda line: str(line.path)):  # type: ignore[attr-defined]
        click.echo(str(line))
    _warn_routes(ctx, config, {topic_slug(t) for a in loaded.selected for t in a.topics})
    bad = len(loaded.load.problems)
    warned = len(loaded.load.notices)
    ctx.echo(
        f"{plural(loaded.load.files_read, 'file')} checked: {bad} bad, "
        + (f"{warned} with warnings, " if warned else "")
        + f"{len(loaded.selected)} selected for publishing.",
        err=bool(bad),
    )
    if bad:
        sys.exit(1)


def _check_telegram(ctx: Context, config: Config) -> None:
    import asyncio

    from publisher.destinations import check_telegram
    from publisher.pipeline import make_sender, require_chat

    require_chat(config)
    checks = asyncio.run(check_telegram(config, make_sender(config)))
    for check in checks:
        click.echo(redact_text(f"{'ok  ' if check.ok else 'FAIL'}  {check.subject}: "
                               f"{check.detail}"))
    problems = sum(1 for check in checks if not check.ok)
    if problems:
        ctx.echo(f"{plural(problems, 'problem')}: the bot cannot post everywhere it should.",
                 err=True)
        sys.exit(1)
    extra = [name for name, key in (("the alert chat", "alert_chat"),
                                    ("the audit chat", "audit_chat"))
             if str(getattr(config.telegram, key)).strip()]
    ctx.echo(f"The bot can post to {plural(len(config.destinations), 'destination')}"
             f"{''.join(f' and {name}' for name in extra)}.")


@cli.command()
@click.argument("directory", required=False, default=".",
                type=click.Path(file_okay=False, path_type=Path))
@command
def init(ctx: Context, directory: Path) -> None:
    """Start a site in DIRECTORY (default: here): a commented config.toml, an empty articles/.

    Never overwrites anything: what exists is left as it is. The config shows every key
    with its default, commented out.

    \b
    Example:
      publisher init mysite
      cd mysite && publisher build
    """
    from publisher.starter import init_site

    if ctx.config_path is not None:
        raise click.UsageError("init writes DIRECTORY/config.toml; it takes no -c")
    results = init_site(directory)
    for item in results:
        shown = f"{item.path}/" if item.path.is_dir() else str(item.path)
        ctx.echo(f"Created {shown}" if item.created else f"Kept {shown}: it exists already")
    here = directory.resolve() == Path.cwd().resolve()
    steps = [] if here else [(f"cd {click.format_filename(directory)}", "")]
    steps += [
        (f"$EDITOR {results[0].path.name}", "set feeds.base_url, feeds.title, telegram.chat_id"),
        ("publisher check", "after putting article files into articles/"),
        ("publisher preview articles/FILE.txt", "one article, as posted and in the feeds"),
        ("publisher build", "writes the feeds into feeds/"),
        ("TELEGRAM_BOT_TOKEN=... publisher push --dry-run", "what a push would post"),
    ]
    width = max(len(step) for step, _ in steps)
    ctx.echo("\nNext (publisher finds config.toml in the current folder):\n" + "\n".join(
        f"  {step:<{width}}  # {why}" if why else f"  {step}" for step, why in steps
    ))


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@command
def preview(ctx: Context, file: Path) -> None:
    """Show one article file as a push would post it, per destination, and its feed entry.

    Needs no bot token and no state; sends nothing and writes nothing. Says when the article
    would not be selected, and why.

    \b
    Example:
      publisher preview -c config.toml articles/robots.txt
    """
    from publisher.preview import render_preview

    click.echo(render_preview(ctx.config(), file))


def dm_line(dms: DmReport, planned: int) -> str:
    """What the push did for followers, in one line."""
    line = (f"DMs to followers: {dms.sent} sent, {dms.failed} failed, {dms.uncertain} "
            f"uncertain, {dms.removed} followers removed (blocked the bot), {dms.rate_limited} "
            f"rate limited; {planned} planned, {dms.left} pending.")
    return line + (f" Error: {dms.error}" if dms.error else "")


@cli.command()
@click.option("--dry-run", is_flag=True,
              help="Print what would be posted; send and change nothing.")
@click.option("--reedit", is_flag=True,
              help="Also edit posts whose rendering differs now (after a template change).")
@click.option("--since", default="24h", show_default=True, metavar="INTERVAL",
              help="With --reedit: the posts sent within this interval (30m, 24h, 7d).")
@command
def push(ctx: Context, dry_run: bool, reedit: bool, since: str) -> None:
    """Post new selected articles to Telegram, each exactly once per chat.

    The bot token comes from the environment variable TELEGRAM_BOT_TOKEN (or
    telegram.token_file). Exit status 1 when a chat failed, a message was refused or no
    post surely went out (each uncertain or failed). SIGTERM or SIGINT stops it after the
    send in flight, with status 128 + the signal's number.

    \b
    Example:
      TELEGRAM_BOT_TOKEN=123:abc publisher push -c config.toml
      publisher push -c config.toml --dry-run
    """
    from publisher.messages import format_for_dry_run
    from publisher.session import Session

    config = ctx.config()
    if dry_run:
        with Session.for_dry_run(config) as session:
            plan = session.dry_run()
        for warning in plan.route_warnings:
            ctx.echo(f"Warning: {warning}", err=True)
        for item in plan.items:
            click.echo(format_for_dry_run(item.message, item.chat_id))
            click.echo()
        for edit in plan.edits:
            click.echo(edit)
        click.echo(f"Dry run: {plural(len(plan.items), 'message')} would be sent; "
                   "nothing was sent.")
        for note in plan.notes:
            click.echo(f"Note: {note}.")
        return
    import asyncio

    from publisher.stopping import STOP_DEADLINE_SECONDS, push_once

    run = asyncio.run(push_once(config, reedit_since(since) if reedit else None))
    stopped_by = signal_name(run.signal) if run.signal else ""
    if run.outcome is None:
        click.echo(f"Error: stopped by {stopped_by}: a send still hanging after "
                   f"{STOP_DEADLINE_SECONDS:g} s was abandoned; the next push records it as "
                   "uncertain (see publisher status).", err=True)
        sys.exit(128 + (run.signal or 0))
    outcome = run.outcome
    for problem in outcome.corpus.problems:
        ctx.echo(str(problem), err=True)
    for warning in outcome.route_warnings:
        ctx.echo(f"Warning: {warning}", err=True)
    summary = outcome.summary()
    ctx.echo(
        f"Sent {sent_text(summary)}; {summary['failed']} failed, "
        f"{summary['uncertain']} uncertain, {summary['skipped']} skipped, "
        f"{summary['orphaned']} orphaned; {plural(int(summary['new']), 'new pair')} in the "
        f"ledger; {summary['seconds']:.2f} s."
        + (f" Edited {plural(int(summary['edited']), 'post')}." if "edited" in summary else "")
        + (f" Retracted {plural(int(summary['retracted']), 'post')}."
           if "retracted" in summary else "")
        + (f" Resolved {plural(int(summary['resolved']), 'uncertain send')} by a look."
           if "resolved" in summary else "")
    )
    if outcome.dms is not None:
        ctx.echo(dm_line(outcome.dms, outcome.fanned_out))
    for chat, reason in outcome.report.held.items():
        ctx.echo(f"{chat}: {reason}")
    for error in outcome.report.errors.values():
        click.echo(f"Error: {redact_text(error)}", err=True)
    if outcome.report.nothing_delivered and not outcome.report.errors:
        click.echo(f"Error: no post surely went out: {summary['uncertain']} uncertain, "
                   f"{summary['failed']} failed (see publisher status).", err=True)
    if run.signal:
        click.echo(f"Stopped by {stopped_by} after the send in flight, which was recorded; "
                   "the rest waits for the next push.", err=True)
        sys.exit(128 + run.signal)
    if not outcome.report.ok:
        sys.exit(1)


def reedit_since(since: str) -> datetime:
    """The moment ``--since INTERVAL`` reaches back to."""
    from datetime import UTC, timedelta

    from publisher.config import interval_seconds

    seconds = interval_seconds(since.strip())
    if seconds is None or seconds <= 0:
        raise click.BadParameter(f"not an interval such as 24h: {since!r}",
                                 param_hint="--since")
    return datetime.now(UTC) - timedelta(seconds=seconds)


def signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document, for scripts.")
@command
def status(ctx: Context, as_json: bool) -> None:
    """Show the last build and push, each destination, recent posts, what waits and why,
    and the orphaned, uncertain and failed posts.

    \b
    Example:
      publisher status -c config.toml
      publisher status -c config.toml --json | jq '.waiting'
    """
    from publisher.status import render_status

    config = ctx.config()
    click.echo(render_status(config, config.path, as_json=as_json))


def _chat_keys(store: Any, config: Config, chat: str | None) -> list[str] | None:
    """The ledger keys ``--chat`` names ("@name" as configured, or a numeric id; a forum
    topic "@group/42" only that topic), or None for every chat; an unknown chat is an
    error."""
    if chat is None:
        return None
    from publisher.destinations import chat_name, follow_migrations, is_chat_id
    from publisher.forum import split_key, with_thread

    name, thread = split_key(chat_name(chat))
    chats = {split_key(chat.strip())[0], name}
    if name in store.chat_names():
        chats.add(store.chat_names()[name])
    chats |= {key for key, known in store.chats().items()
              if known.username and f"@{known.username.lower()}" == name}
    chats |= {follow_migrations(store.migrations(), key) for key in list(chats)}
    keys = {with_thread(key, thread) for key in chats}
    present = [key for key in sorted(keys) if key in store.counts()]
    if not present:
        hint = "" if is_chat_id(name) or name.startswith("@") else " (a chat is @name or an id)"
        raise click.UsageError(f"no post for the chat {chat} in the ledger{hint}")
    return present


def _select_posts(article_ids: tuple[str, ...], everything: bool) -> None:
    if not article_ids and not everything:
        raise click.UsageError("name article ids, or pass --all")
    if article_ids and everything:
        raise click.UsageError("name article ids or pass --all, not both")


def _report_unmatched(ctx: Context, state: str, article_ids: tuple[str, ...],
                      changed: list[tuple[str, str]], chat: str | None) -> None:
    """Ids that matched no post in ``state``: said, and exit 1."""
    missing = sorted(set(article_ids) - {article for article, _ in changed})
    if not missing and (changed or article_ids):
        return
    where = f" in {chat}" if chat else ""
    if missing:
        ctx.echo(f"No {state} post{where} for: {', '.join(missing)}", err=True)
    else:
        ctx.echo(f"No {state} post{where}: nothing to do.", err=True)
    sys.exit(1)


@cli.command()
@click.argument("article_ids", nargs=-1)
@click.option("--chat", help="Only this destination: @name as configured, or its numeric id "
              "(a forum topic: @group/42).")
@click.option("--uncertain", "state", flag_value="uncertain", default=True,
              help="Posts whose delivery is uncertain (the default): you looked, it is not "
                   "in the channel.")
@click.option("--failed", "state", flag_value="failed", help="Failed posts instead.")
@click.option("--sent", "state", flag_value="sent",
              help="Post again articles that were sent, on purpose (name their ids).")
@click.option("--all", "everything", is_flag=True, help="Every post in that state.")
@command
def resend(ctx: Context, article_ids: tuple[str, ...], chat: str | None, state: str,
           everything: bool) -> None:
    """Queue posts again: uncertain ones not in the channel (or failed, or sent ones).

    If an uncertain post is in the channel after all, run `publisher ack` instead. Exit 1
    when nothing matches.

    \b
    Example:
      publisher resend -c config.toml urn:uuid:583f497a-565f-59e8-bf35-c074cf266bce
      publisher resend -c config.toml --all --chat @mychannel
      publisher resend -c config.toml --sent urn:uuid:583f497a-565f-59e8-bf35-c074cf266bce
    """
    from publisher.state import open_store

    _select_posts(article_ids, everything)
    if state == "sent" and everything:
        raise click.UsageError("--sent posts articles again: name their ids (not --all)")
    config = ctx.config()
    # One UPDATE, safe beside a running service: no instance lock needed.
    store = open_store(config.state.url)
    try:
        changed = store.requeue(state, _chat_keys(store, config, chat), list(article_ids))
    finally:
        store.close()
    if changed:
        them = "it" if len(changed) == 1 else "them"
        ctx.echo(f"Requeued {plural(len(changed), state + ' post')}; the next push sends {them}.")
    _report_unmatched(ctx, state, article_ids, changed, chat)


@cli.command()
@click.argument("article_ids", nargs=-1)
@click.option("--chat", help="Only this destination: @name as configured, or its numeric id "
              "(a forum topic: @group/42).")
@click.option("--all", "everything", is_flag=True, help="Every uncertain post.")
@click.option("--message-id", type=click.IntRange(min=1),
              help="The post's message id in the channel (one post only), for its link.")
@command
def ack(ctx: Context, article_ids: tuple[str, ...], chat: str | None, everything: bool,
        message_id: int | None) -> None:
    """Mark uncertain posts as sent: you looked, they are in the channel.

    They are never posted again. If a post is not there, run `publisher resend` instead.
    Exit 1 when nothing matches.

    \b
    Example:
      publisher ack -c config.toml urn:uuid:583f497a-565f-59e8-bf35-c074cf266bce
      publisher ack -c config.toml --all --chat @mychannel
      publisher ack -c config.toml urn:uuid:583f497a-565f-59e8-bf35-c074cf266bce --message-id 42
    """
    from publisher.state import UNCERTAIN, open_store

    _select_posts(article_ids, everything)
    config = ctx.config()
    store = open_store(config.state.url)
    try:
        keys = _chat_keys(store, config, chat)
        if message_id is not None:
            matches = store.matching(UNCERTAIN, keys, list(article_ids))
            if len(matches) != 1:
                raise click.UsageError(
                    f"--message-id names one post; {plural(len(matches), 'uncertain post')} "
                    "match (name one article id, and --chat if it went to several)"
                )
        changed = store.acknowledge(keys, list(article_ids), message_id)
    finally:
        store.close()
    if changed:
        ctx.echo(f"Marked {plural(len(changed), 'uncertain post')} as sent; "
                 f"{'it is' if len(changed) == 1 else 'they are'} never posted again.")
    _report_unmatched(ctx, UNCERTAIN, article_ids, changed, chat)


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

    sys.exit(run_service(ctx.config_source().path))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port to listen on (0: any free port).")
@service_command
def serve(ctx: Context, host: str, port: int) -> None:
    """Serve the feeds folder over HTTP for feed readers; builds nothing.

    Serves index.html, feeds.opml and every feed with its Content-Type, ETag, Last-Modified
    (304 when unchanged), gzip, byte ranges, keep-alive and Cache-Control, within the
    [server] limits (timeouts, max_connections). Stops cleanly on SIGINT or SIGTERM.

    \b
    Example:
      publisher build -c config.toml && publisher serve -c config.toml --port 8080
    """
    import signal
    import threading

    from publisher.config import interval_seconds
    from publisher.server import limits_from, start_server

    config = ctx.config()
    if not config.feeds.dir.is_dir():
        ctx.echo(f"Warning: {config.feeds.dir} does not exist yet; run publisher build.",
                 err=True)
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    server = start_server(listen, feeds_dir=config.feeds.dir,
                          cache_seconds=interval_seconds(config.schedule.build),
                          limits=limits_from(config.server))
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
