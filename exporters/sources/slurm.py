"""The Slurm job of each GPU from a job-mapping directory, as a prolog script writes it.

The convention is dcgm-exporter's (``--hpc-job-mapping-dir``): one file per GPU, named by the
GPU's index (``0``, ``1``, ...) or its UUID (``GPU-...``, ``MIG-...``), holding the id of each job
on that GPU, one per line. The prolog writes the file, the epilog removes it. A line may carry
more after the id (Princeton's jobstats writes ``<jobid> <uid>``): only the first word is read.

Everything is bounded: files, bytes per file, jobs per file. A file over a bound, or a word that
is not a job id, is skipped; the rest of the directory is still read.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MAX_FILES = 1024
MAX_FILE_BYTES = 4096
MAX_JOBS_PER_GPU = 64
# Slurm job ids, with the array (123_4) and heterogeneous (123+1) forms.
_JOB_ID = re.compile(r"[0-9]{1,20}(?:[_+][0-9]{1,10})?")
_GPU_NAME = re.compile(r"[0-9]{1,4}|(?:GPU|MIG)-[A-Za-z0-9-]{1,80}")


def parse_job_file(text: str) -> tuple[str, ...]:
    """The job ids in one mapping file, in order, without repeats."""
    jobs: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if words and _JOB_ID.fullmatch(words[0]) and words[0] not in jobs:
            jobs.append(words[0])
            if len(jobs) == MAX_JOBS_PER_GPU:
                break
    return tuple(jobs)


class JobDirectory:
    """Reads a mapping directory; counts the files it had to skip in :attr:`errors`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.errors = 0

    def read(self) -> dict[str, tuple[str, ...]] | None:
        """GPU name (index or UUID) → its jobs; None when there is no such directory."""
        try:
            entries = sorted(os.scandir(self.path), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:
            self.errors += 1
            return None
        out: dict[str, tuple[str, ...]] = {}
        for entry in entries[:MAX_FILES]:
            if not _GPU_NAME.fullmatch(entry.name):
                continue  # a prolog's temporary file, a README: not a GPU
            try:
                with open(entry.path, "rb") as f:
                    raw = f.read(MAX_FILE_BYTES + 1)
            except OSError:
                continue  # removed by an epilog between the listing and the read
            if len(raw) > MAX_FILE_BYTES:
                self.errors += 1
                continue
            jobs = parse_job_file(raw.decode("utf-8", "replace"))
            if jobs:
                out[entry.name] = jobs
        return out
