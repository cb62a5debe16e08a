"""A post's photo: by URL, or downloaded and uploaded when Telegram cannot fetch the URL.

``telegram.photo_upload`` chooses:

* ``"fallback"`` (the default): the URL first; refused (``PhotoRejected``), the image is
  downloaded by publisher (``publisher.images``), converted when needed, and uploaded;
* ``"always"``: uploaded without trying the URL;
* ``"never"``: the URL only, as before uploads existed.

Once uploaded, a photo goes to the other chats of the run by the file id Telegram gave it
(its bytes are sent once). Whatever cannot be posted as a photo goes as text (the caller's
fallback). Telegram caches a
failed fetch of a URL for days, so a refused URL is remembered in the state
(``RefusedPhotos``) and never tried by URL again: the next push, or another chat, goes
straight to the upload.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import OrderedDict
from typing import Any

from publisher.config import Config
from publisher.db import Database, upsert
from publisher.delivery import PhotoRejected, PhotoUploader, Sender
from publisher.errors import ImageUnavailable
from publisher.images import ImageFetcher, Photo, prepare_photo
from publisher.logs import event
from publisher.messages import Message
from publisher.state import utc_now_iso

log = logging.getLogger(__name__)

SendOptions = dict[str, Any]

REFUSED_KEY = "refused_photo:"  # meta keys: this and a URL's SHA-256
DOWNLOADS_KEPT = 3  # prepared photos kept in a run, for an article going to several chats


class RefusedPhotos:
    """The photo URLs Telegram refused to fetch, one ``meta`` row each (``refused_photo:``
    and the URL's digest: a URL may be longer than an index entry may be; the value says
    the URL, the reason and when); without a database, for this run only."""

    def __init__(self, db: Database | None) -> None:
        self._db = db
        self._known: set[str] = set()

    def __contains__(self, url: object) -> bool:
        if not isinstance(url, str):
            return False
        key = _key(url)
        if key in self._known:
            return True
        if self._db is None:
            return False
        row = self._db.execute("SELECT 1 FROM meta WHERE key = ?", (key,)).fetchone()
        if row:
            self._known.add(key)
        return bool(row)

    def add(self, url: str, reason: str) -> None:
        key = _key(url)
        self._known.add(key)
        if self._db is not None:
            value = json.dumps({"url": url, "reason": reason, "at": utc_now_iso()},
                               ensure_ascii=False)
            self._db.execute(upsert("meta", ("key", "value"), ("key",)), (key, value))


def _key(url: str) -> str:
    return REFUSED_KEY + hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()


def photo_poster(store: object, sender: Sender, config: Config) -> PhotoPoster:
    """The dispatcher's poster: refused URLs remembered in the state's database, when
    ``store`` has one (a test's fake store may not)."""
    db = getattr(store, "db", None)
    telegram = config.telegram
    fetcher = ImageFetcher(allow_private=telegram.fetch_private_addresses,
                           timeout=telegram.timeout_seconds)
    return PhotoPoster(sender, RefusedPhotos(db), fetcher, mode=telegram.photo_upload)


class PhotoPoster:
    """Posts a message's photo as ``telegram.photo_upload`` says; ``post`` gives the
    message id, or None when the photo could not go (the caller sends text)."""

    def __init__(self, sender: Sender, refused: RefusedPhotos, fetcher: ImageFetcher, *,
                 mode: str = "fallback") -> None:
        self._sender = sender
        self._refused = refused
        self._fetcher = fetcher
        # A sender that cannot upload (a test's) posts by URL only.
        self._mode = mode if isinstance(sender, PhotoUploader) else "never"
        self._photos: OrderedDict[str, Photo | ImageUnavailable] = OrderedDict()
        self._posting: dict[str, asyncio.Lock] = {}  # by photo URL
        self._file_ids: dict[str, str] = {}  # photo URL -> the file id of its upload

    async def post(self, chat_id: str, message: Message, label: str,
                   options: SendOptions) -> int | None:
        """``options``: the keyword arguments every send of the message takes (its forum
        topic's ``thread_id``), given to the URL, file id and upload sends alike."""
        url = message.photo_url
        assert url is not None
        # One post of a photo at a time: chats sending the same photo together learn of a
        # refusal, and get the upload's file id, before they try it themselves.
        async with self._posting.setdefault(url, asyncio.Lock()):
            by_url = self._mode == "never" or (self._mode == "fallback"
                                               and url not in self._refused)
            if by_url:
                try:
                    return await self._sender.send_photo(chat_id, url, message.html,
                                                         message.buttons, **options)
                except PhotoRejected as exc:
                    event(log, logging.WARNING, "photo_refused", chat=label,
                          article=message.article_id, reason=exc.reason, photo=url)
                    if self._mode == "never":
                        return None
                    self._refused.add(url, exc.reason)
            return await self._uploaded(chat_id, message, label, options)

    async def _uploaded(self, chat_id: str, message: Message, label: str,
                        options: SendOptions) -> int | None:
        """Posted by the file id of this run's upload of the photo, else uploaded."""
        url = message.photo_url
        assert url is not None
        file_id = self._file_ids.get(url)
        if file_id:
            try:
                return await self._sender.send_photo(chat_id, file_id, message.html,
                                                     message.buttons, **options)
            except PhotoRejected as exc:  # the bytes can still go
                event(log, logging.WARNING, "photo_file_id_refused", chat=label,
                      article=message.article_id, reason=exc.reason, photo=url)
                del self._file_ids[url]
        return await self._upload(chat_id, message, label, options)

    async def _upload(self, chat_id: str, message: Message, label: str,
                      options: SendOptions) -> int | None:
        url = message.photo_url
        assert url is not None and isinstance(self._sender, PhotoUploader)
        photo = await self._photo(url)
        if isinstance(photo, ImageUnavailable):
            event(log, logging.WARNING, "photo_not_uploaded", chat=label,
                  article=message.article_id, reason=str(photo), photo=url)
            return None
        try:
            uploaded = await self._sender.send_photo_file(
                chat_id, photo.data, photo.filename, message.html, message.buttons, **options)
        except PhotoRejected as exc:
            event(log, logging.WARNING, "photo_upload_refused", chat=label,
                  article=message.article_id, reason=exc.reason, photo=url)
            return None
        event(log, logging.INFO, "photo_uploaded", chat=label, article=message.article_id,
              photo=url, bytes=len(photo.data), converted=photo.converted or "no")
        if uploaded.file_id:
            self._file_ids[url] = uploaded.file_id
        return uploaded.message_id

    async def _photo(self, url: str) -> Photo | ImageUnavailable:
        """The prepared photo of ``url`` (or why there is none), downloaded once per run
        for the few latest URLs (called under the URL's lock)."""
        if url not in self._photos:
            self._photos[url] = await self._download(url)
            while len(self._photos) > DOWNLOADS_KEPT:
                self._photos.popitem(last=False)
        return self._photos[url]

    async def _download(self, url: str) -> Photo | ImageUnavailable:
        try:
            data = await self._fetcher.fetch(url)
            return await asyncio.to_thread(prepare_photo, data)  # Pillow's work is CPU-bound
        except ImageUnavailable as exc:
            return exc
