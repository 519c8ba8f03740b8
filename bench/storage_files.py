"""What storing a submit's inputs costs the disk here: ``LocalStorage.put_many`` of a
content and a style (64 KB each) for new jobs, from 1, 4 and 16 threads at once.

    python bench/storage_files.py [--jobs 400] [--dir /tmp]

Each job is a new directory and two files, written to temporary names, fsync'ed,
renamed and the directories fsync'ed, as a submit does before its 202. Prints jobs
per second and the CPU milliseconds per job (this process's: the kernel's work in
the writes counts as its system time). Everything it writes is removed afterwards.
The figure moves with the filesystem's state (ext4 allocating inodes where many were
freed lately costs more): compare runs made together.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo

from shared.storage import CONTENT_FILE, LocalStorage, style_file  # noqa: E402

INPUT_BYTES = 64 * 1024


def run(storage: LocalStorage, jobs: int, threads: int) -> tuple[float, float]:
    """(jobs per second, CPU ms per job) for ``jobs`` new jobs stored from ``threads``."""
    files = {CONTENT_FILE: os.urandom(INPUT_BYTES), style_file(0): os.urandom(INPUT_BYTES)}

    def store(count: int) -> None:
        for _ in range(count):
            storage.put_many(uuid.uuid4(), files)

    shares = [jobs // threads + (1 if i < jobs % threads else 0) for i in range(threads)]
    workers = [threading.Thread(target=store, args=(share,)) for share in shares]
    cpu, wall = time.process_time(), time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - wall
    return jobs / elapsed, 1000.0 * (time.process_time() - cpu) / jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the data dir goes")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sqbench_storage_", dir=args.dir))
    try:
        storage = LocalStorage(root)
        for threads in (1, 4, 16):
            per_s, cpu_ms = run(storage, args.jobs, threads)
            print(f"{threads:2d} threads: {per_s:,.0f} jobs/s, {cpu_ms:.2f} ms CPU per job")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
