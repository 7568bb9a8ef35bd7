"""Who owns a process, read from ``/proc/<pid>/cgroup``: a Kubernetes pod or a Slurm job.

The file has one line per hierarchy, ``ID:CONTROLLERS:PATH``: one line ``0::PATH`` on cgroup v2,
a line per controller on v1. The path names the owner:

- Kubernetes (kubelet, any runtime): a ``kubepods`` path holding the pod UID and ending in the
  container id. cgroupfs driver: ``/kubepods/burstable/pod<uid>/<id>``; systemd driver:
  ``/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/
  cri-containerd-<id>.scope`` (``docker-``, ``crio-`` likewise).
- Slurm: ``/slurm/uid_<uid>/job_<id>/step_<step>/...`` (cgroup/v1 plugin) or
  ``/system.slice/slurmstepd.scope/job_<id>/step_<step>/...`` (cgroup/v2 plugin).

Parsing is a pure function of the text; reading takes the procfs root from config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Pod UIDs are RFC 4122 UUIDs; the systemd driver writes them with underscores.
_POD = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?$"
)
_CONTAINER = re.compile(r"^(?:(?:docker|cri-containerd|containerd|crio|cri-o)-)?([0-9a-f]{64})")
_JOB = re.compile(r"^job_(\d{1,20})$")
_STEP = re.compile(r"^step_([A-Za-z0-9_.]{1,32})$")
MAX_CGROUP_BYTES = 64 * 1024  # a real file is a few hundred bytes; more is not a cgroup file


@dataclass(frozen=True, slots=True)
class CgroupOwner:
    """What the cgroup path says about a process; empty strings where it says nothing."""

    pod_uid: str = ""
    container_id: str = ""
    job: str = ""
    step: str = ""

    def __bool__(self) -> bool:
        return bool(self.pod_uid or self.job)


def owner_of_path(path: str) -> CgroupOwner:
    """The owner named by one cgroup path (empty when it names none)."""
    parts = [p for p in path.split("/") if p]
    if any(p.startswith(("kubepods", "kubelet-kubepods")) for p in parts):
        for i, part in enumerate(parts):
            m = _POD.search(part)
            if m is None:
                continue
            container = ""
            if i + 1 < len(parts):
                c = _CONTAINER.match(parts[i + 1])
                container = c.group(1) if c else ""
            return CgroupOwner(pod_uid=m.group(1).replace("_", "-"), container_id=container)
    for i, part in enumerate(parts):
        m = _JOB.match(part)
        if m is None:
            continue
        step = _STEP.match(parts[i + 1]) if i + 1 < len(parts) else None
        return CgroupOwner(job=m.group(1), step=step.group(1) if step else "")
    return CgroupOwner()


def parse_cgroup(text: str) -> CgroupOwner:
    """The owner of a process from its ``/proc/<pid>/cgroup`` text, v1 or v2.

    The v2 line (``0::``) is read first; on v1 the first controller line that names an owner
    wins (all controllers place a pod's or a step's process alike).
    """
    paths: list[str] = []
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3 or not fields[2].startswith("/"):
            continue
        if fields[0] == "0" and fields[1] == "":
            paths.insert(0, fields[2])
        else:
            paths.append(fields[2])
    for path in paths:
        owner = owner_of_path(path.strip())
        if owner:
            return owner
    return CgroupOwner()


def read_cgroup_owner(procfs: Path, pid: int) -> CgroupOwner | None:
    """The owner of ``pid``; None when its cgroup file cannot be read (gone, or no access)."""
    try:
        with open(procfs / str(pid) / "cgroup", "rb") as f:
            raw = f.read(MAX_CGROUP_BYTES + 1)
    except OSError:
        return None
    if len(raw) > MAX_CGROUP_BYTES:
        return None
    return parse_cgroup(raw.decode("utf-8", "replace"))
