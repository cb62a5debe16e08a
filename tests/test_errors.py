"""The exception hierarchy: one module, two families a send can end in, old names kept."""

from __future__ import annotations

import inspect
import re

import pytest

from publisher import catalog, db, delivery, errors, loader, service
from publisher.errors import Ambiguous, NotSent, PublisherError, SendError


def error_classes() -> list[type[BaseException]]:
    return [value for _, value in inspect.getmembers(errors, inspect.isclass)
            if issubclass(value, BaseException) and value.__module__ == errors.__name__]


def test_every_class_is_a_publisher_error_exported_and_drawn_in_the_tree() -> None:
    doc = errors.__doc__ or ""
    for cls in error_classes():
        assert issubclass(cls, PublisherError), cls
        assert cls.__name__ in errors.__all__, cls
        drawn = f" {cls.__name__}\n" in doc or f" {cls.__name__} " in doc
        assert drawn, f"{cls.__name__} is not in the module's tree"


def drawn_parents() -> dict[str, str]:
    """Each class drawn in the module docstring's tree, with the class it hangs from."""
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (column of the name, name), outermost first
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^(\s*(?:[│ ]*[├└]── )?)(\w+)", line)
        if match is None or not hasattr(errors, match.group(2)):
            continue
        column, name = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= column:
            stack.pop()
        if stack:
            parents[name] = stack[-1][1]
        stack.append((column, name))
    return parents


def test_the_drawn_tree_is_the_class_tree() -> None:
    parents = drawn_parents()
    assert set(parents) == {cls.__name__ for cls in error_classes()} - {"PublisherError"}
    for name, parent in parents.items():
        assert getattr(errors, name).__bases__ == (getattr(errors, parent),), name


def test_every_send_error_is_either_not_sent_or_ambiguous() -> None:
    send_errors = [cls for cls in error_classes() if issubclass(cls, SendError)]
    assert len(send_errors) > 2
    for cls in send_errors:
        if cls is SendError:
            continue
        assert issubclass(cls, NotSent) != issubclass(cls, Ambiguous), cls


@pytest.mark.parametrize(("module", "name"), [
    (delivery, "SendError"), (delivery, "NotSent"), (delivery, "Ambiguous"),
    (delivery, "RateLimited"), (delivery, "ChatMigrated"), (delivery, "PhotoRejected"),
    (delivery, "EntitiesRejected"), (delivery, "Rejected"), (delivery, "ChatForbidden"),
    (delivery, "Unauthorized"), (delivery, "Unavailable"), (catalog, "SyncInterrupted"),
    (service, "PushIncomplete"), (db, "Interrupted"), (loader, "FutureDate"),
])
def test_the_old_import_locations_still_work(module: object, name: str) -> None:
    assert getattr(module, name) is getattr(errors, name)


def test_a_rate_limit_says_how_long_and_is_not_sent() -> None:
    error = delivery.RateLimited(2.5)
    assert isinstance(error, NotSent) and error.retry_after == 2.5
    assert error.reason == "Telegram asked to wait 2.5 s (429)"
    unusable = delivery.RateLimited(None, "soon")
    assert unusable.retry_after is None and "'soon'" in unusable.reason
