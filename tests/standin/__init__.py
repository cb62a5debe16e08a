"""The Bot API stand-in: a strict local Telegram Bot API server for the tests and benchmarks.

``standin.server``: the server (stdlib only; also runs as a script), with its spec
``bot-api.json`` next to it. ``standin.fixtures``: the pytest fixtures ``botapi`` and
``botapi_process`` (conftest.py imports them).
"""
