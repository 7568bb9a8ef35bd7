"""Owners of processes from /proc/<pid>/cgroup (pods and Slurm steps, cgroup v1 and v2) and the
Slurm job-mapping directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcwatch.exporters.sources.cgroup import (
    MAX_CGROUP_BYTES,
    CgroupOwner,
    parse_cgroup,
    read_cgroup_owner,
)
from dcwatch.exporters.sources.slurm import MAX_FILE_BYTES, JobDirectory, parse_job_file

UID = "8c1f5b2e-3d4a-4b6c-9e7f-0a1b2c3d4e5f"
CID = "3f4e9a1b2c7d8e0f" * 4  # 64 hex digits

# cgroup v2, systemd driver, containerd (the common case since Kubernetes 1.25).
POD_V2_SYSTEMD = (
    "0::/kubepods.slice/kubepods-burstable.slice/"
    f"kubepods-burstable-pod{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope\n"
)
# cgroup v2, cgroupfs driver, guaranteed QoS (no QoS level in the path).
POD_V2_CGROUPFS = f"0::/kubepods/pod{UID}/{CID}\n"
# cgroup v1, cgroupfs driver, docker: one line per controller.
POD_V1_CGROUPFS = (
    "".join(
        f"{n}:{c}:/kubepods/besteffort/pod{UID}/{CID}\n"
        for n, c in ((12, "pids"), (11, "memory"), (7, "devices"), (3, "cpu,cpuacct"))
    )
    + f"1:name=systemd:/kubepods/besteffort/pod{UID}/{CID}\n0::/\n"
)
# cgroup v1, systemd driver, CRI-O.
POD_V1_SYSTEMD_CRIO = (
    f"11:memory:/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-{CID}.scope\n"
    "1:name=systemd:/system.slice/crio.service\n"
)
# kind / nested kubelet: a prefix before the kubepods slices.
POD_KIND = (
    "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
    f"kubelet-kubepods-besteffort-pod{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope\n"
)
# The pause or conmon process of a pod: the pod is known, the container id is not.
POD_CONMON = f"0::/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-conmon-x.scope\n"
# Slurm cgroup/v1 plugin: the step's task cgroup, in every controller Slurm constrains.
SLURM_V1 = (
    "11:devices:/slurm/uid_1001/job_4242/step_0/task_0\n"
    "9:memory:/slurm/uid_1001/job_4242/step_0/task_0\n"
    "4:cpuset:/slurm/uid_1001/job_4242/step_0\n"
    "1:name=systemd:/system.slice/slurmd.service\n"
)
# Slurm cgroup/v2 plugin: under slurmstepd.scope, the user part of a batch step.
SLURM_V2_BATCH = "0::/system.slice/slurmstepd.scope/job_4243/step_batch/user/task_0\n"
SLURM_V2_EXTERN = "0::/system.slice/slurmstepd.scope/job_4244/step_extern/user/task_special\n"
HOST_V2 = "0::/user.slice/user-1000.slice/session-3.scope\n"
HOST_V1 = "12:pids:/user.slice/user-1000.slice\n1:name=systemd:/user.slice/user-1000.slice\n"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (POD_V2_SYSTEMD, CgroupOwner(pod_uid=UID, container_id=CID)),
        (POD_V2_CGROUPFS, CgroupOwner(pod_uid=UID, container_id=CID)),
        (POD_V1_CGROUPFS, CgroupOwner(pod_uid=UID, container_id=CID)),
        (POD_V1_SYSTEMD_CRIO, CgroupOwner(pod_uid=UID, container_id=CID)),
        (POD_KIND, CgroupOwner(pod_uid=UID, container_id=CID)),
        (POD_CONMON, CgroupOwner(pod_uid=UID)),
        (SLURM_V1, CgroupOwner(job="4242", step="0")),
        (SLURM_V2_BATCH, CgroupOwner(job="4243", step="batch")),
        (SLURM_V2_EXTERN, CgroupOwner(job="4244", step="extern")),
    ],
    ids=[
        "pod-v2-systemd",
        "pod-v2-cgroupfs",
        "pod-v1-cgroupfs",
        "pod-v1-systemd-crio",
        "pod-kind",
        "pod-conmon",
        "slurm-v1",
        "slurm-v2-batch",
        "slurm-v2-extern",
    ],
)
def test_owner_of_pods_and_slurm_steps(text: str, want: CgroupOwner) -> None:
    got = parse_cgroup(text)
    assert got == want and bool(got)


@pytest.mark.parametrize(
    "text",
    [
        HOST_V2,
        HOST_V1,
        "0::/\n",
        "",
        "garbage without colons\n",
        # A pod-looking name outside kubepods, and a job-looking name that is not a number.
        f"0::/system.slice/pod{UID}.service\n",
        "0::/system.slice/job_abc/step_0\n",
    ],
)
def test_host_processes_and_lookalikes_have_no_owner(text: str) -> None:
    assert not parse_cgroup(text)
    assert parse_cgroup(text) == CgroupOwner()


def test_v2_line_wins_over_v1_controllers() -> None:
    hybrid = f"4:memory:/slurm/uid_1/job_7/step_0\n0::/kubepods/pod{UID}/{CID}\n"
    assert parse_cgroup(hybrid).pod_uid == UID


def test_read_from_a_procfs_tree(tmp_path: Path) -> None:
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "cgroup").write_text(SLURM_V2_BATCH)
    (tmp_path / "99").mkdir()
    (tmp_path / "99" / "cgroup").write_text("0::/" + "x" * MAX_CGROUP_BYTES)
    assert read_cgroup_owner(tmp_path, 4242) == CgroupOwner(job="4243", step="batch")
    assert read_cgroup_owner(tmp_path, 5) is None  # gone
    assert read_cgroup_owner(tmp_path, 99) is None  # over the bound: not a cgroup file


def test_job_file_forms() -> None:
    assert parse_job_file("4242\n") == ("4242",)
    assert parse_job_file("4242\n4243\n4242\n\n") == ("4242", "4243")
    assert parse_job_file("45916256 262563\n") == ("45916256",)  # jobstats: id and uid
    assert parse_job_file("123_4\n77+1\n") == ("123_4", "77+1")  # array and het jobs
    assert parse_job_file("not-a-job\n; rm -rf\n") == ()


def test_job_directory(tmp_path: Path) -> None:
    d = tmp_path / "dcgm-job-map"
    assert JobDirectory(d).read() is None  # absent is absent, not an error
    d.mkdir()
    (d / "0").write_text("4242\n")
    (d / "1").write_text("4243\n4244\n")
    (d / "MIG-5f2a7c1e-0b1d-5e3a-9c4b-2d6e8f0a1b2c").write_text("5000\n")
    (d / "2").write_text("")  # the prolog is still writing: no job yet
    (d / ".0.tmp").write_text("9999\n")  # not a GPU name
    (d / "3").write_text("1\n" * MAX_FILE_BYTES)  # over the bound
    reader = JobDirectory(d)
    assert reader.read() == {
        "0": ("4242",),
        "1": ("4243", "4244"),
        "MIG-5f2a7c1e-0b1d-5e3a-9c4b-2d6e8f0a1b2c": ("5000",),
    }
    assert reader.errors == 1
