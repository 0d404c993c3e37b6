"""The ``local`` backend's files on disk: nothing is visible before it is complete.

Layout of the root folder::

    <root>/.url-key              the URL signing key (mode 0600), unless the config gives one
    <root>/.tmp/<random>/        an upload in progress: ``data`` (the body so far)
    <root>/<token>/data          a completed upload's bytes
    <root>/<token>/meta          its file name and content type (JSON)

An upload writes ``data`` and ``meta`` into its own folder under ``.tmp``, fsyncs both and the
folder, then renames the folder to ``<token>`` in one step (and fsyncs the root): after a crash
a token folder is either complete or absent, and :meth:`FileStore.clean_temporary` removes the
leftovers at the next start (unless another server has the root open). The rename fails when ``<token>`` exists, so of two uploads to one
slot only the first counts.

Every lookup goes from the root's open folder with ``O_NOFOLLOW`` on each step (token folder,
``meta``, ``data``), so a symlink planted in the root is never followed, and a token is a
checked hexadecimal name (see :mod:`slixmpp_http_upload.http.target`): no path leaves the root.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import os
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

KEY_FILE = ".url-key"
TEMPORARY = ".tmp"
DATA = "data"
META = "meta"
_READ_ONLY = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_DIRECTORY = _READ_ONLY | os.O_DIRECTORY
FULL_DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT})


class SlotTaken(Exception):
    """The slot's file is already there (a second PUT)."""


class UploadDeleted(Exception):
    """The slot's file was deleted (expiry, purge) while its upload was in progress."""


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A completed upload, opened: ``fd`` is the data file's (the caller closes it)."""

    fd: int
    size: int
    mtime: float
    mtime_ns: int
    name: str
    content_type: str | None


class FileStore:
    """The files of one root folder (created if missing)."""

    def __init__(self, root: Path) -> None:
        """Open ``root``, creating it and its ``.tmp``; :class:`OSError` if either cannot be
        written (uploads are made in one and moved to the other)."""
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / TEMPORARY).mkdir(exist_ok=True)
        for folder in (root, root / TEMPORARY):
            if not os.access(folder, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "not writable", str(folder))
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.root_fd)

    def url_key(self) -> bytes:
        """The signing key kept in the root: made once (32 random bytes, mode 0600), then reused.
        A new key is written in full under another name, then linked into place: nobody (another
        process starting at the same time, this one after a crash) finds the file half written."""
        path = self.root / KEY_FILE
        try:
            return _read_key(path)
        except FileNotFoundError:
            pass
        key = secrets.token_bytes(32)
        draft = self.root / f"{KEY_FILE}.{secrets.token_hex(8)}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, key.hex().encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(draft, path)
        except FileExistsError:  # another process made it first
            return _read_key(path)
        finally:
            draft.unlink()
        os.fsync(self.root_fd)
        return key

    def clean_temporary(self) -> int | None:
        """Remove the uploads a previous run left unfinished; how many there were, or None when
        another server has the root open (its uploads in progress are left alone).

        A server holds a shared lock on the root as long as its store is open; the exclusive
        lock taken here first is granted only when no other one does (a crashed one's lock
        went with its process)."""
        try:
            fcntl.flock(self.root_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fcntl.flock(self.root_fd, fcntl.LOCK_SH)
            return None
        try:
            folder = self.root / TEMPORARY
            leftovers = list(folder.iterdir())
            for entry in leftovers:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        finally:
            fcntl.flock(self.root_fd, fcntl.LOCK_SH)
        return len(leftovers)

    def has(self, token: str) -> bool:
        """Whether an upload (completed) holds ``token``."""
        try:
            os.stat(token, dir_fd=self.root_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def free_bytes(self) -> int:
        """Space left on the root's file system for an unprivileged writer."""
        info = os.statvfs(self.root_fd)
        return info.f_bavail * info.f_frsize

    def open(self, token: str, name: str) -> StoredFile | None:
        """The completed upload ``token`` if it was stored under ``name``; None otherwise."""
        try:
            folder = os.open(token, _DIRECTORY, dir_fd=self.root_fd)
        except OSError:
            return None
        try:
            meta = _read_meta(folder)
            if meta is None or meta.get("name") != name:
                return None
            fd = os.open(DATA, _READ_ONLY, dir_fd=folder)
        except OSError:
            return None
        finally:
            os.close(folder)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            return None
        content_type = meta.get("content_type")
        if not isinstance(content_type, str):
            content_type = None
        return StoredFile(fd, info.st_size, info.st_mtime, info.st_mtime_ns, name, content_type)

    def delete(self, token: str) -> None:
        """Remove a completed upload (gone for readers at once), and the uploads of ``token``
        still in progress, whose commit then fails (:class:`UploadDeleted`): an upload begun
        before its file expired must not bring the file back after the sweeper has been."""
        temporary = self.root / TEMPORARY
        in_progress = [name for name in os.listdir(temporary) if name.startswith(f"{token}.")]
        for name in (*in_progress, token):  # the token last: a commit may move its folder there meanwhile
            folder = temporary / f"delete-{token}-{secrets.token_hex(4)}"
            try:
                if name == token:
                    os.rename(token, folder, src_dir_fd=self.root_fd)
                else:
                    os.rename(temporary / name, folder)
            except FileNotFoundError:
                continue
            shutil.rmtree(folder, ignore_errors=True)

    def begin(self, token: str, name: str, content_type: str | None) -> Upload:
        """A new upload for ``token``, in its own temporary folder."""
        return Upload(self, token, {"name": name, "content_type": content_type})


def _read_key(path: Path) -> bytes:
    key = bytes.fromhex(path.read_text().strip())
    if len(key) < 16:
        raise ValueError(f"{path} holds no valid key (delete it to make a new one)")
    return key


def _read_meta(folder: int) -> dict[str, object] | None:
    fd = os.open(META, _READ_ONLY, dir_fd=folder)
    try:
        raw = os.read(fd, 65536)
    finally:
        os.close(fd)
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


class Upload:
    """One body on its way to disk: :meth:`write` the chunks, then :meth:`commit` once, or
    :meth:`discard`. Writes are plain (the page cache takes them); the fsyncs of commit run
    in a thread, which alone decides the upload's fate once it has begun."""

    def __init__(self, store: FileStore, token: str, meta: dict[str, object]) -> None:
        self.store = store
        self.token = token
        self.meta = meta
        self.folder = store.root / TEMPORARY / f"{token}.{secrets.token_hex(8)}"
        self.folder.mkdir()
        try:
            self.fd = os.open(self.folder / DATA, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        self.written = 0
        self.committing = False

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            done = os.write(self.fd, view)
            view = view[done:]
        self.written += len(chunk)

    async def commit(self) -> None:
        """Make the upload durable and visible; :class:`SlotTaken` if another got there first,
        :class:`UploadDeleted` if its file was deleted meanwhile. On any failure the upload is discarded. Cancelling the caller does not stop the thread:
        the upload then ends complete, or gone if the commit fails."""
        self.committing = True
        await asyncio.shield(asyncio.get_running_loop().run_in_executor(None, self._commit))

    def _commit(self) -> None:
        try:
            self._make_durable()
        except FileNotFoundError:  # our folder was moved away: FileStore.delete
            self._remove()
            raise UploadDeleted(self.token) from None
        except BaseException:
            self._remove()
            raise

    def _make_durable(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        meta = os.open(self.folder / META, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(meta, json.dumps(self.meta).encode())
            os.fsync(meta)
        finally:
            os.close(meta)
        folder = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
        try:
            os.rename(self.folder, self.token, dst_dir_fd=self.store.root_fd)
        except OSError as error:
            if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise SlotTaken(self.token) from None
            raise
        os.fsync(self.store.root_fd)

    def discard(self) -> None:
        """Forget the upload (nothing of it stays) unless its commit has begun; safe to call more
        than once."""
        if not self.committing:
            self._remove()

    def _remove(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        shutil.rmtree(self.folder, ignore_errors=True)
