"""publisher: curated news articles to per-topic RSS/Atom feeds and Telegram posts."""

__version__ = "0.1.0"
