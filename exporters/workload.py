"""The ``workload`` collector: which pod, container or Slurm job holds each GPU.

Info metrics of value 1, for joins; the GPU series themselves never change labels:

- ``dcwatch_gpu_allocation_info{gpu,uuid,namespace,pod,container}``: the kubelet's
  pod-resources API (``List`` on ``workload.pod_resources_socket``). Device ids are matched to
  the GPUs NVML sees: a GPU UUID, a MIG device UUID (reported on its parent GPU) or a
  time-slicing replica ``<uuid>::<n>``; the resource name does not matter (renamed resources
  work). Several containers may share a GPU (MIG, time-slicing): one series each.
- ``dcwatch_gpu_job_info{gpu,uuid,hpc_job}``: the Slurm job(s) on each GPU, from the
  job-mapping directory (dcgm-exporter's convention, :mod:`~dcwatch.exporters.sources.slurm`)
  and from the cgroups of the processes on the GPU. The label is ``hpc_job`` (dcgm-exporter's
  name too) because ``job`` is Prometheus' own target label and would arrive as ``exported_job``.
- ``dcwatch_gpu_process_owner_info{gpu,uuid,pid,namespace,pod,container,pod_uid,hpc_job}``: per
  compute process in a pod or a job (``workload.processes``), joined on ``uuid, pid`` with the gpu
  collector's per-process series. ``pod_uid`` and ``hpc_job`` come from ``/proc/<pid>/cgroup``;
  the names from the API, when the process is in a pod and one container alone holds its GPU.

No socket, no directory and no GPU: nothing is exported and nothing is paid but a stat or two.
The API's answer, the directory and the process cgroups are re-read every ``workload.interval``.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import Metric

from dcwatch import settings as st
from dcwatch.exporters.base import Collector, CollectorConfig, CollectorDeps, NoDataError
from dcwatch.exporters.registry import register
from dcwatch.exporters.sources.cgroup import CgroupOwner, read_cgroup_owner
from dcwatch.exporters.sources.nvml_devices import GpuKey, GpuTable
from dcwatch.exporters.sources.podresources.client import (
    INSTALL_HINT,
    PodResourcesClient,
    PodResourcesError,
    PodResourcesUnavailableError,
    socket_state,
)
from dcwatch.exporters.sources.podresources.wire import Allocation
from dcwatch.exporters.sources.slurm import JobDirectory
from dcwatch.exporters.sources.sysfs import Rediscovered
from dcwatch.exposition import Families, MetricSpec

ALLOCATION = MetricSpec(
    "dcwatch_gpu_allocation_info",
    "Container the kubelet gave this GPU (or a MIG slice or replica of it) to (always 1)",
    ("gpu", "uuid", "namespace", "pod", "container"),
)
JOB = MetricSpec(
    "dcwatch_gpu_job_info",
    "Slurm job on this GPU (always 1), from the job-mapping directory or process cgroups",
    ("gpu", "uuid", "hpc_job"),
)
PROCESS_OWNER = MetricSpec(
    "dcwatch_gpu_process_owner_info",
    "Pod or Slurm job of a compute process on this GPU (always 1); names where known",
    ("gpu", "uuid", "pid", "namespace", "pod", "container", "pod_uid", "hpc_job"),
)
DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
DEFAULT_JOB_DIR = Path("/run/dcgm-job-map")
RPC_TIMEOUT = 2.0  # seconds; well inside the collector timeout
Holder = tuple[str, str, str]  # namespace, pod, container


@dataclass(frozen=True)
class WorkloadOptions:
    pod_resources_socket: Path | None = DEFAULT_SOCKET
    slurm_job_dir: Path | None = DEFAULT_JOB_DIR
    interval: float = 10.0
    processes: bool = True


@register("workload", default=True, order=15, description="pods, containers, Slurm jobs per GPU")
class WorkloadCollector(Collector):
    """Attribution: the pod, container or Slurm job holding each GPU, and its processes' owners."""

    SETTINGS = (
        st.Setting(
            "workload.pod_resources_socket",
            st.to_optional_path,
            DEFAULT_SOCKET,
            "kubelet pod-resources socket (empty: off; absent: no pod attribution)",
        ),
        st.Setting(
            "workload.slurm_job_dir",
            st.to_optional_path,
            DEFAULT_JOB_DIR,
            "Slurm job-mapping directory, one file per GPU (empty: off)",
        ),
        st.Setting(
            "workload.interval",
            st.to_nonneg_float,
            10.0,
            "re-read the pod-resources API, job directory and process cgroups this often",
        ),
        st.Setting(
            "workload.processes",
            st.to_bool,
            True,
            "name the pod / Slurm job of each compute process on a GPU",
            is_bool=True,
        ),
    )
    Options = WorkloadOptions
    options: WorkloadOptions
    METRICS = (ALLOCATION, JOB, PROCESS_OWNER)

    def __init__(self, config: CollectorConfig, deps: CollectorDeps | None = None) -> None:
        super().__init__(config, deps)
        self.clock = time.monotonic  # tests replace it
        opts = self.options
        self._gpus = GpuTable(self.deps.nvml, config.rediscover_interval, lambda: self.clock())
        sock = opts.pod_resources_socket
        self._client = PodResourcesClient(sock, RPC_TIMEOUT) if sock is not None else None
        self._jobdir = JobDirectory(opts.slurm_job_dir) if opts.slurm_job_dir else None
        self._procfs = Path(config.procfs)
        # Wrapped in 1-tuples: "absent" (None) is an answer to keep until the next re-read too.
        clock, every = (lambda: self.clock()), opts.interval
        self._pods = Rediscovered(lambda: (self._list_pods(),), every, clock)
        self._jobs = Rediscovered(lambda: (self._read_jobs(),), every, clock)
        self._owners: dict[int, tuple[float, CgroupOwner | None]] = {}
        self._no_grpc = False
        self._rpc_errors = 0
        self._logged: set[Hashable] = set()

    # ---- collector API ----

    def collect(self) -> Iterable[Metric]:
        gpus = self._gpus.get()
        (allocations,) = self._pods.get()
        (job_files,) = self._jobs.get()
        if not gpus.devices and allocations is None and job_files is None:
            raise NoDataError("no GPU, no pod-resources socket and no Slurm job-mapping directory")
        holders = self._holders(gpus.devices, allocations or [])
        jobs: dict[GpuKey, set[str]] = defaultdict(set)
        for name, ids in (job_files or {}).items():
            key = gpus.by_name(name)
            if key is not None:
                jobs[key].update(ids)
        owners = self._process_owners(gpus.processes()) if self.options.processes else []
        for key, _, _, owner in owners:
            if owner.job:
                jobs[key].add(owner.job)

        f = Families()
        by_gpu: dict[GpuKey, set[Holder]] = defaultdict(set)
        for device, hs in holders.items():
            by_gpu[gpus.devices[device]].update(hs)
        for key in sorted(by_gpu):
            for holder in sorted(by_gpu[key]):
                f.add(ALLOCATION, 1, *key, *holder)
        for key in sorted(jobs):
            for job in sorted(jobs[key]):
                f.add(JOB, 1, *key, job)
        for key, device, pid, owner in owners:
            # Names only for a process in a pod, on a device one container alone holds.
            names = ("", "", "")
            if owner.pod_uid and len(holders.get(device, ())) == 1:
                (names,) = holders[device]
            f.add(PROCESS_OWNER, 1, *key, str(pid), *names, owner.pod_uid, owner.job)
        return f

    def read_errors(self) -> int:
        return self._rpc_errors + self._gpus.errors + (self._jobdir.errors if self._jobdir else 0)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._gpus.close()

    # ---- sources ----

    def _list_pods(self) -> list[Allocation] | None:
        client = self._client
        if client is None or self._no_grpc:
            return None
        state = socket_state(client.socket)
        if state == "absent":
            return None
        if state == "denied":
            self._log_once(
                ("denied", client.socket),
                logging.WARNING,
                "kubelet pod-resources socket %s is not accessible to this user (the kubelet "
                "makes it root-only): no pod attribution; run the agent as root "
                "(deploy/kubernetes/components/pod-attribution-as-root) or set "
                "workload.pod_resources_socket empty",
                client.socket,
            )
            return None
        try:
            return client.list()
        except PodResourcesUnavailableError as e:
            self._no_grpc = True
            self._log_once("grpc", logging.WARNING, "%s: no pod attribution; %s", e, INSTALL_HINT)
        except PodResourcesError as e:
            self._rpc_errors += 1
            self._log_once(
                ("rpc", e.code),
                logging.WARNING,
                "kubelet pod-resources %s: %s; pod attribution omitted, retried in %gs",
                client.socket,
                e,
                self.options.interval,
            )
        return None

    def _read_jobs(self) -> dict[str, tuple[str, ...]] | None:
        return self._jobdir.read() if self._jobdir is not None else None

    def _holders(
        self, devices: dict[str, GpuKey], allocations: list[Allocation]
    ) -> dict[str, set[Holder]]:
        """Device UUID (GPU or MIG) → the containers holding it (or a replica of it)."""
        holders: dict[str, set[Holder]] = defaultdict(set)
        unmatched = 0
        for a in allocations:
            device = a.device_id.split("::", 1)[0]  # time-slicing replica <uuid>::<n>
            if device not in devices:
                unmatched += a.device_id.startswith(("GPU-", "MIG-"))
                continue
            holders[device].add((a.namespace, a.pod, a.container))
        if unmatched:
            self._log_once(
                "unmatched",
                logging.DEBUG,
                "%d GPU device ids from the kubelet match no GPU NVML sees",
                unmatched,
            )
        return holders

    def _process_owners(
        self, processes: list[tuple[GpuKey, str, int]]
    ) -> list[tuple[GpuKey, str, int, CgroupOwner]]:
        """The processes in a pod or a Slurm job, with their owner (cgroups cached per pid)."""
        now, ttl = self.clock(), self.options.interval
        seen = {pid for _, _, pid in processes}
        self._owners = {p: v for p, v in self._owners.items() if p in seen}
        out = []
        for key, device, pid in processes:
            hit = self._owners.get(pid)
            if hit is None or now - hit[0] >= ttl:
                hit = self._owners[pid] = (now, read_cgroup_owner(self._procfs, pid))
            owner = hit[1]
            if owner:
                out.append((key, device, pid, owner))
        return out

    def _log_once(self, key: Hashable, level: int, msg: str, *args: object) -> None:
        if key not in self._logged:
            self._logged.add(key)
            self.log.log(level, msg, *args)
