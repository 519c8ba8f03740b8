"""Small JPEG copies of a job's images for the admin page, made with Pillow on request.

Inputs and results never change once written, so their thumbnails are kept in
a small in-process LRU cache (keyed by job, file name, size and, on a filesystem, the
file's mtime) and the
browser may keep them for a day; a preview changes while the job runs and is
never cached. A missing file (not written yet, or removed by retention) is
``None``: the caller shows a placeholder.
"""

from __future__ import annotations

import io
import threading
import uuid
from collections import OrderedDict
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from shared.errors import NotFoundError, StorageError
from shared.images import upright
from shared.storage import Storage

THUMB_SIZES = (96, 320)  # the table's thumbnails; the job page's images
JPEG_QUALITY = 85
CACHE_ENTRIES = 2048  # ~5 KB each at 96 px


class ThumbnailCache:
    def __init__(self, entries: int = CACHE_ENTRIES) -> None:
        self._entries = entries
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()

    def thumbnail(
        self, storage: Storage, job_id: uuid.UUID, name: str, size: int, *, cache: bool
    ) -> bytes | None:
        """A JPEG no larger than ``size`` on its longest side; None if the file is gone or unreadable."""
        path = storage.local_path(job_id, name)
        if path is None:
            # An object store: names of written files never change what they hold.
            key = (f"{job_id}/{name}", size, 0)
            source: Path | io.BytesIO | None = None
        else:
            try:
                key = (str(path), size, path.stat().st_mtime_ns)
            except FileNotFoundError:
                return None
            source = path
        if cache:
            with self._lock:
                found = self._cache.get(key)
                if found is not None:
                    self._cache.move_to_end(key)
                    return found
        if source is None:
            try:
                source = io.BytesIO(storage.get(job_id, name))
            except (NotFoundError, StorageError):
                return None  # the placeholder, as for a missing file
        data = make_thumbnail(source, size)
        if data is not None and cache:
            with self._lock:
                self._cache[key] = data
                while len(self._cache) > self._entries:
                    self._cache.popitem(last=False)
        return data


def make_thumbnail(path: Path | io.BytesIO, size: int) -> bytes | None:
    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))  # JPEG inputs decode at a fraction of their size
            image.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
            rgb = upright(image).convert("RGB")  # a phone photo as it was taken
    except FileNotFoundError:
        return None
    except (UnidentifiedImageError, OSError, ValueError):
        return None  # a half-written or corrupt file: the placeholder, not a 500
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return out.getvalue()


# The one placeholder of the pages (admin.css draws an empty slot the same way): a grey
# tile saying why there is no image.
PLACEHOLDER_SVG = """<svg xmlns="http://www.w3.org/2000/svg" width="{s}" height="{s}" viewBox="0 0 96 96">
<rect width="96" height="96" rx="6" fill="#eef0f3"/>
<text x="48" y="52" font-family="system-ui,sans-serif" font-size="10" text-anchor="middle" fill="#6b7385">{label}</text>
</svg>"""


def placeholder_svg(size: int, label: str) -> str:
    return PLACEHOLDER_SVG.format(s=size, label=label)
