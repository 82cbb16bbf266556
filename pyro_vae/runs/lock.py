"""The one-writer lock of a run folder.

A process that writes a run folder holds its lock (:class:`RunLock`, an advisory
``flock`` on ``.pyro-vae.lock`` inside the folder) for as long as it runs: a second
writer is refused with the holder's PID. The lock of a process that died is released
by the kernel with the process, so the next writer takes the folder over.
"""

import errno
import fcntl
import os
from pathlib import Path

from .files import CheckpointError, file_mode

LOCK = ".pyro-vae.lock"


class RunLockedError(CheckpointError):
    """Another live process holds the run folder's lock."""


class RunLock:
    """An advisory lock on a run folder, held by the process that writes it.

    ``RunLock(folder).acquire()`` creates the folder if need be, opens
    ``folder/.pyro-vae.lock`` and takes an exclusive, non-blocking ``flock`` on it,
    then writes its PID there. The kernel releases the lock when the process exits,
    however it exits, so a lock left by a process that died (``kill -9``) is taken
    over by the next writer. :meth:`release` removes the lock file (while still
    holding it) and, with ``remove_created=True``, the folder too if this lock created
    it and it is empty, so that a failed start leaves nothing behind.

    :raises RunLockedError: if another live process holds the lock (naming its PID).
    :raises CheckpointError: if the folder cannot be created or written (naming why).
    """

    def __init__(self, folder, what="run folder"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK
        self.fd, self.created = None, False

    def acquire(self):
        folder = self.folder
        if folder.exists() and not folder.is_dir():
            raise CheckpointError(f"{folder} is a file, not a folder; choose another {self.what}")
        if not folder.exists():
            try:
                folder.mkdir(parents=True)
                self.created = True
            except FileExistsError:
                if not folder.is_dir():
                    raise CheckpointError(f"{folder} is a file, not a folder; choose another {self.what}") from None
            except OSError as e:
                raise CheckpointError(f"cannot create the {self.what} {folder}: {e.strerror}") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, file_mode())
            except OSError as e:
                self._remove_created()
                raise CheckpointError(f"cannot write into the {self.what} {folder}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = self._holder(fd)
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise CheckpointError(f"cannot lock the {self.what} {folder}: {e.strerror}") from None
                raise RunLockedError(
                    f"{folder} is being written by another pyro-vae process "
                    f"({f'PID {holder}' if holder else 'PID unknown'}); wait for it to "
                    f"finish, or choose another folder"
                ) from None
            # the holder before us may have removed the file between our open and flock:
            # then we locked a file nobody else sees; open the path again
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:
            os.close(fd)
            raise CheckpointError(f"cannot write into the {self.what} {folder}: {e.strerror}") from None
        self.fd = fd
        return self

    @staticmethod
    def _holder(fd):
        try:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def _remove_created(self):
        if self.created:
            try:
                self.folder.rmdir()
            except OSError:
                pass
            self.created = False

    @property
    def held(self):
        return self.fd is not None

    def release(self, remove_created=False):
        """Give the lock up (removing its file); with ``remove_created``, also remove
        the folder if this lock created it and nothing else was written there."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        if remove_created:
            self._remove_created()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release(remove_created=exc[0] is not None)
