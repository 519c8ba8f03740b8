"""Where job files live: a directory (the default) or an object store, behind one interface.

Per job: ``jobs/<id>/content.png``, ``style-<i>.png``, and the files workers write,
named by attempt (``result.a<N>.png``, ``checkpoint.a<N>.i<I>.bin``,
``preview.a<N>.i<I>.png``). ``Storage`` is what every caller sees;
``LocalStorage`` (below) keeps the files under the data dir, written atomically;
``S3Storage`` (shared/storage_s3.py) keeps them in a bucket
(``STYLEQUEUE_STORAGE_URL=s3://…``). ``open_storage`` picks one from the settings.

Uploaded inputs are kept byte for byte as the client sent them (after they
were checked as JPEG, PNG or WebP images): re-encoding a photo as PNG would cost
more than the rest of a submit. Pillow reads them by content, not by name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from shared.errors import (
    NotFoundError,
    StorageError,
    StorageFullError,
    StorageUnavailableError,
)

if TYPE_CHECKING:
    from shared.settings import Settings

CONTENT_FILE = "content.png"
PREVIEW_FILE = "preview.png"
CHECKPOINT_FILE = "checkpoint.bin"
RESULT_FILE = "result.png"
JOBS_DIR = "jobs"
FSYNC_THREADS = 16  # concurrent fsyncs per process: a submit needs up to 1 + MAX_STYLES


def style_file(index: int) -> str:
    """The name of the ``index``-th (0-based) style image of a job."""
    return f"style-{index}.png"


# OSErrors that are the storage's state, not a bug: what a StorageError stands for.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
UNAVAILABLE_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO, errno.ESTALE, errno.ENODEV, errno.ENXIO}
)

ALLOWED_NAMES = frozenset({CONTENT_FILE, PREVIEW_FILE, CHECKPOINT_FILE, RESULT_FILE})

# What a worker writes is named by its attempt (and, for a checkpoint or a preview,
# the iteration it holds): a worker that lost its lease can only ever write files of
# its own, which no row names. The row's result_file, checkpoint_file and
# preview_file say which one is committed. The fixed names above are what jobs
# stored before that (a row whose column is empty) use.
_FENCED_NAME = re.compile(
    r"(result|preview)\.a[0-9]{1,9}(\.i[0-9]{1,9})?\.png|checkpoint\.a[0-9]{1,9}\.i[0-9]{1,9}\.bin"
)


def result_file(attempt: int) -> str:
    """The name of the result that ``attempt`` writes."""
    return f"result.a{attempt}.png"


def checkpoint_file(attempt: int, iteration: int) -> str:
    """The name of the checkpoint that ``attempt`` writes after ``iteration``."""
    return f"checkpoint.a{attempt}.i{iteration}.bin"


def preview_file(attempt: int, iteration: int) -> str:
    """The name of the preview that ``attempt`` writes after ``iteration``."""
    return f"preview.a{attempt}.i{iteration}.png"


def committed_result(named: str | None) -> str:
    """The result file a row names (``result_file``), or the one jobs used to have."""
    return named or RESULT_FILE


def committed_preview(named: str | None) -> str:
    """The preview file a row names (``preview_file``), or the one jobs used to have."""
    return named or PREVIEW_FILE


def is_checkpoint(name: str) -> bool:
    """A checkpoint's name, of any attempt."""
    return name == CHECKPOINT_FILE or (
        name.startswith("checkpoint.a") and _FENCED_NAME.fullmatch(name) is not None
    )


class Storage(Protocol):
    """The job files of every job, wherever they are kept.

    A write is atomic (a reader sees the old file or the new one) and, unless
    ``durable=False`` (previews), durable when it returns. Errors of the store
    itself are ``StorageFullError`` / ``StorageUnavailableError``; a missing file
    is ``NotFoundError``.
    """

    def put(self, job_id: uuid.UUID, name: str, data: bytes, *, durable: bool = True) -> None: ...

    def put_many(
        self, job_id: uuid.UUID, files: Mapping[str, bytes], *, durable: bool = True
    ) -> None: ...

    def get(self, job_id: uuid.UUID, name: str) -> bytes: ...

    def exists(self, job_id: uuid.UUID, name: str) -> bool: ...

    def delete(self, job_id: uuid.UUID, name: str) -> None: ...

    def delete_checkpoints(self, job_id: uuid.UUID) -> None: ...

    def delete_job_files(self, job_id: uuid.UUID) -> None: ...

    def local_path(self, job_id: uuid.UUID, name: str) -> Path | None:
        """The file on this machine's filesystem, if the store has one (for sendfile)."""
        ...

    def presigned_url(self, job_id: uuid.UUID, name: str) -> str | None:
        """A URL a client may GET the file from directly for a while, if the store has one."""
        ...


def open_storage(settings: Settings) -> Storage:
    """The store the settings name: ``STYLEQUEUE_STORAGE_URL``, else the data dir."""
    if settings.storage_url:
        from shared.storage_s3 import S3Storage

        return S3Storage(settings.storage_url, aws_env=dict(settings.aws_env))
    return LocalStorage(settings.data_dir)


class LocalStorage:
    """Files of jobs, under ``root/jobs/<job id>/``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        # Made once, when a process starts: a data dir that goes missing later (a volume
        # unmounted, a directory removed) is a StorageUnavailableError, not made again.
        with contextlib.suppress(OSError):
            self.root.mkdir(parents=True, exist_ok=True)

    def job_dir(self, job_id: uuid.UUID) -> Path:
        return self.root / JOBS_DIR / str(job_id)

    def path(self, job_id: uuid.UUID, name: str) -> Path:
        """Where file ``name`` of a job lives (it may not exist)."""
        check_name(name)
        return self.job_dir(job_id) / name

    def local_path(self, job_id: uuid.UUID, name: str) -> Path | None:
        return self.path(job_id, name)

    def presigned_url(self, job_id: uuid.UUID, name: str) -> str | None:
        return None

    def put(self, job_id: uuid.UUID, name: str, data: bytes, *, durable: bool = True) -> None:
        """Write a job file atomically: a temp file, fsync'ed (if ``durable``), then renamed.

        Readers see the old file or the new one, never half of one. Previews are
        written with ``durable=False``: losing one in a crash costs nothing.
        """
        self.put_many(job_id, {name: data}, durable=durable)

    def put_many(
        self, job_id: uuid.UUID, files: Mapping[str, bytes], *, durable: bool = True
    ) -> None:
        """Write several job files, each atomically: temp name, fsync, rename, fsync the dir.

        The fsyncs of a step run concurrently, so the filesystem commits them
        together: a submit waits for two disk flushes rather than one per file.
        """
        directory = self.job_dir(job_id)
        targets = {name: self.path(job_id, name) for name in files}
        try:
            created = self._make_job_dir(directory)
            try:
                _write_all(directory, files, targets, durable=durable, created=created)
            except BaseException:
                if created:  # leave no half directory behind
                    with contextlib.suppress(OSError):
                        directory.rmdir()
                raise
        except OSError as exc:
            error = self._storage_error(exc, f"could not write {', '.join(files)}")
            if error is None:
                raise
            raise error from exc

    def _make_job_dir(self, directory: Path) -> bool:
        """Create ``jobs/<id>/`` (True) or find it (False); never the data dir itself.

        A missing data dir is an unmounted or removed volume: creating it afresh
        would hide that and scatter files where nobody backs them up.
        """
        directory.parent.mkdir(exist_ok=True)
        try:
            directory.mkdir()
        except FileExistsError:
            return False
        return True

    def get(self, job_id: uuid.UUID, name: str) -> bytes:
        """The bytes of a job file; NotFoundError if there is none, StorageError if unreadable."""
        try:
            return self.path(job_id, name).read_bytes()
        except OSError as exc:
            error = self._storage_error(exc, f"could not read {name}")
            if error is not None:
                raise error from exc
            if isinstance(exc, FileNotFoundError):
                raise NotFoundError(f"job {job_id} has no {name}") from None
            raise

    def _storage_error(self, exc: OSError, what: str) -> StorageError | None:
        """The StorageError that ``exc`` means, or None when it means none (a bug)."""
        name = errno.errorcode.get(exc.errno or 0, "")
        details = {"errno": name} if name else {}
        if exc.errno in FULL_ERRNOS:
            return StorageFullError(
                f"storage full: {what} (no space left where job files are kept); "
                "retry once space has been freed",
                details=details,
            )
        if exc.errno in (errno.ENOENT, errno.ENOTDIR) and not self.root.is_dir():
            return StorageUnavailableError(
                f"storage unavailable: {what} (the data dir is missing or not a directory)",
                details=details,
            )
        if exc.errno in UNAVAILABLE_ERRNOS:
            return StorageUnavailableError(
                f"storage unavailable: {what} ({exc.strerror or name})", details=details
            )
        return None

    def exists(self, job_id: uuid.UUID, name: str) -> bool:
        return self.path(job_id, name).is_file()

    def delete(self, job_id: uuid.UUID, name: str) -> None:
        self.path(job_id, name).unlink(missing_ok=True)

    def delete_checkpoints(self, job_id: uuid.UUID) -> None:
        """Remove every checkpoint of a job, of any attempt (once it is finished)."""
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.job_dir(job_id)):
                # and the temp file of a checkpoint whose writer died mid-write
                if is_checkpoint(entry.name) or _checkpoint_temp(entry.name):
                    Path(entry.path).unlink(missing_ok=True)

    def delete_job_files(self, job_id: uuid.UUID) -> None:
        """Remove every file of a job (used when a submit fails half way, and by retention)."""
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)


def _checkpoint_temp(name: str) -> bool:
    """A temp file ``_write_temp`` made for a checkpoint (left behind by a killed writer)."""
    return name.startswith(".checkpoint") and name.endswith(".tmp")


def check_name(name: str) -> None:
    # Names come from this module's constants; refuse anything else so that a
    # bug can never turn into a path outside the job's directory.
    if name in ALLOWED_NAMES:
        return
    if name.startswith("style-") and name.endswith(".png") and name[6:-4].isdigit():
        return
    if _FENCED_NAME.fullmatch(name):
        return
    raise ValueError(f"not a job file name: {name!r}")


def _write_all(
    directory: Path,
    files: Mapping[str, bytes],
    targets: Mapping[str, Path],
    *,
    durable: bool,
    created: bool,
) -> None:
    staged: list[tuple[Path, Path]] = []
    try:
        for name, data in files.items():
            staged.append((_write_temp(directory, name, data), targets[name]))
        if durable:
            _fsync_concurrently([tmp for tmp, _ in staged])
        for tmp, target in staged:
            os.replace(tmp, target)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    if durable:
        # The renames must survive a crash too: fsync the directory entries,
        # and the job directory's own entry in jobs/ when it is new.
        _fsync_concurrently([directory, directory.parent] if created else [directory])


def _write_temp(directory: Path, name: str, data: bytes) -> Path:
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return Path(tmp_name)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_fsync_pool: tuple[int, ThreadPoolExecutor] | None = None


def _fsync_concurrently(paths: list[Path]) -> None:
    """fsync every path, in parallel threads (fsync releases the GIL)."""
    global _fsync_pool
    if len(paths) == 1:
        _fsync(paths[0])
        return
    # One pool per process: threads do not survive a fork (gunicorn, Celery).
    if _fsync_pool is None or _fsync_pool[0] != os.getpid():
        _fsync_pool = (os.getpid(), ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="fsync"))
    # The calling thread flushes the first path itself instead of waiting idle:
    # one thread hand-off fewer per call (~0.15 ms of CPU per submit here).
    pending = [_fsync_pool[1].submit(_fsync, path) for path in paths[1:]]
    try:
        _fsync(paths[0])
    finally:
        for future in pending:
            future.result()
