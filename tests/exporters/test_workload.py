"""Attribution end to end: a fake kubelet speaking the real pod-resources v1 protocol (stubs
generated from exporters/sources/podresources/api.proto, served by grpcio on a unix socket), the
fake NVML, a procfs of cgroup files and a Slurm job-mapping directory."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dcwatch.agent.config import AgentConfig
from dcwatch.exporters.base import CollectorDeps, NoDataError
from dcwatch.exporters.sources.podresources import client as client_mod
from dcwatch.exporters.sources.podresources.client import (
    PodResourcesClient,
    PodResourcesError,
    socket_state,
)
from dcwatch.exporters.sources.podresources.wire import Allocation, WireError, decode_list_response
from dcwatch.exporters.workload import WorkloadCollector, WorkloadOptions
from dcwatch.exposition import encode
from tests.conftest import FIXTURES
from tests.exporters.test_cgroup import POD_V1_CGROUPFS, POD_V2_SYSTEMD, SLURM_V2_BATCH, UID
from tests.fakes.fake_nvml import FakeNvml, default_gpus, h100, mig_gpu

grpc = pytest.importorskip("grpc", reason="pip install 'dcwatch[kubernetes]' (dev extra)")
protoc = pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools (dev extra)")

PROTO = Path(__file__).resolve().parents[2] / "exporters" / "sources" / "podresources"
H100, T4 = default_gpus()[0].uuid, default_gpus()[1].uuid
# The fake NVML's GPUs with a pod and a Slurm job: appended to fake-nvml/metrics.golden.txt by
# tests/e2e/test_dashboards_e2e.py, so the "by namespace / pod / job" panels have data.
GOLDEN = FIXTURES / "fake-nvml" / "workload.golden.txt"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, ModuleType]:
    """api_pb2 and api_pb2_grpc, generated from the .proto the way upstream stubs are."""
    out = tmp_path_factory.mktemp("stubs")
    argv = ["protoc", f"-Ifake_kubelet_v1={PROTO}", f"--python_out={out}"]
    argv += [f"--grpc_python_out={out}", str(PROTO / "api.proto")]
    assert protoc.main(argv) == 0
    sys.path.insert(0, str(out))
    try:
        import fake_kubelet_v1.api_pb2 as pb2  # type: ignore[import-not-found]
        import fake_kubelet_v1.api_pb2_grpc as pb2_grpc  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(out))
    return pb2, pb2_grpc


class FakeKubelet:
    """``v1.PodResourcesLister`` on a unix socket; ``pods`` is what List answers."""

    def __init__(self, api: tuple[ModuleType, ModuleType], socket: Path) -> None:
        pb2, pb2_grpc = api
        self.pb2 = pb2
        self.pods: list[Any] = []
        self.calls = 0
        self.fail: Any = None
        kubelet = self

        class Servicer(pb2_grpc.PodResourcesListerServicer):  # type: ignore[misc,name-defined]
            def List(self, request: Any, context: Any) -> Any:
                kubelet.calls += 1
                if kubelet.fail is not None:
                    context.abort(kubelet.fail, "kubelet says no")
                return pb2.ListPodResourcesResponse(pod_resources=kubelet.pods)

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb2_grpc.add_PodResourcesListerServicer_to_server(Servicer(), self.server)
        self.server.add_insecure_port(f"unix://{socket}")
        self.server.start()

    def pod(self, namespace: str, name: str, *containers: tuple[str, str, list[str]]) -> Any:
        """A PodResources with every field a kubelet fills (topology, CPUs, memory, DRA)."""
        pb2 = self.pb2
        numa = pb2.TopologyInfo(nodes=[pb2.NUMANode(ID=1)])
        return pb2.PodResources(
            name=name,
            namespace=namespace,
            containers=[
                pb2.ContainerResources(
                    name=c,
                    devices=[pb2.ContainerDevices(resource_name=r, device_ids=ids, topology=numa)],
                    cpu_ids=[2, 3, 130],
                    memory=[pb2.ContainerMemory(memory_type="memory", size=2**34, topology=numa)],
                    dynamic_resources=[
                        pb2.DynamicResource(
                            claim_name="c",
                            claim_namespace=namespace,
                            claim_resources=[
                                pb2.ClaimResource(
                                    cdi_devices=[pb2.CDIDevice(name="nvidia.com/gpu=0")],
                                    driver_name="gpu.nvidia.com",
                                    device_name="gpu-0",
                                )
                            ],
                        )
                    ],
                )
                for c, r, ids in containers
            ],
        )

    def stop(self) -> None:
        self.server.stop(grace=None).wait()


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # A unix socket path is at most 107 bytes: pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="dcw-kl-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def kubelet(api: tuple[ModuleType, ModuleType], sockdir: Path) -> Iterator[FakeKubelet]:
    k = FakeKubelet(api, sockdir / "kubelet.sock")
    yield k
    k.stop()


def procfs(tmp_path: Path, cgroups: dict[int, str]) -> Path:
    root = tmp_path / "proc"
    for pid, text in cgroups.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cgroup").write_text(text)
    root.mkdir(exist_ok=True)
    return root


def collector(
    tmp_path: Path,
    nvml: FakeNvml,
    *,
    socket: Path | None,
    job_dir: Path | None = None,
    cgroups: dict[int, str] | None = None,
    processes: bool = True,
) -> WorkloadCollector:
    opts = WorkloadOptions(socket, job_dir, interval=10.0, processes=processes)
    cfg = AgentConfig(
        sysfs=tmp_path / "sys",
        procfs=procfs(tmp_path, cgroups or {}),
        collectors=("workload",),
        options={"workload": opts},
    )
    c = WorkloadCollector(cfg, CollectorDeps(nvml=nvml))
    c.clock = lambda: 0.0
    return c


def samples(c: WorkloadCollector) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for fam in c.collect():
        for s in fam.samples:
            assert s.value == 1, s
            out.setdefault(s.name, []).append(dict(s.labels))
    return out


def owner_info(
    gpu: str,
    uuid: str,
    pid: str,
    names: tuple[str, str, str] = ("", "", ""),
    pod_uid: str = "",
    job: str = "",
) -> dict[str, str]:
    ns, pod, container = names
    return {"gpu": gpu, "uuid": uuid, "pid": pid, "namespace": ns, "pod": pod} | {
        "container": container,
        "pod_uid": pod_uid,
        "hpc_job": job,
    }


# ---- the wire format ----------------------------------------------------------------------


def test_decoder_reads_what_protobuf_writes(api: tuple[ModuleType, ModuleType]) -> None:
    pb2 = api[0]
    k = FakeKubelet.__new__(FakeKubelet)
    k.pb2 = pb2
    answer = pb2.ListPodResourcesResponse(
        pod_resources=[
            k.pod("ml", "train-0", ("trainer", "nvidia.com/gpu", [H100, "GPU-x"])),
            k.pod("ml", "sidecar"),  # a pod without devices
            pb2.PodResources(name="bare", namespace="default", containers=[{"name": "c"}]),
        ]
    )
    assert decode_list_response(answer.SerializeToString()) == [
        Allocation("ml", "train-0", "trainer", "nvidia.com/gpu", H100),
        Allocation("ml", "train-0", "trainer", "nvidia.com/gpu", "GPU-x"),
    ]
    assert decode_list_response(b"") == []


def test_decoder_skips_fields_a_newer_kubelet_adds(api: tuple[ModuleType, ModuleType]) -> None:
    pb2 = api[0]
    devices = pb2.ContainerDevices(resource_name="nvidia.com/gpu", device_ids=[H100])
    container = pb2.ContainerResources(name="c", devices=[devices]).SerializeToString()
    # fields 9 (varint), 10 (fixed64), 11 (fixed32), 12 (bytes): unknown to this .proto
    unknown = b"\x48\x96\x01" + b"\x51" + b"\x00" * 8 + b"\x5d" + b"\x00" * 4 + b"\x62\x02hi"
    container += unknown
    pod = b"\x0a\x01p\x12\x02ns" + b"\x1a" + bytes([len(container)]) + container + unknown
    raw = b"\x0a" + bytes([len(pod)]) + pod
    pb2.ListPodResourcesResponse.FromString(raw)  # protobuf accepts it too
    assert decode_list_response(raw) == [Allocation("ns", "p", "c", "nvidia.com/gpu", H100)]


@pytest.mark.parametrize(
    "raw",
    [b"\x0a\x05ab", b"\x0a", b"\x0b\x00", b"\x00\x01", b"\x08" + b"\xff" * 11],
    ids=["past-end", "no-length", "group", "field-0", "overlong-varint"],
)
def test_decoder_refuses_malformed_answers(raw: bytes) -> None:
    with pytest.raises(WireError):
        decode_list_response(raw)


# ---- the client ---------------------------------------------------------------------------


def test_client_lists_over_the_unix_socket(kubelet: FakeKubelet, sockdir: Path) -> None:
    kubelet.pods = [kubelet.pod("ml", "train-0", ("trainer", "nvidia.com/gpu", [H100]))]
    c = PodResourcesClient(sockdir / "kubelet.sock", timeout=5)
    try:
        assert c.list() == [Allocation("ml", "train-0", "trainer", "nvidia.com/gpu", H100)]
        kubelet.fail = grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(PodResourcesError, match="PERMISSION_DENIED") as e:
            c.list()
        assert e.value.code == "PERMISSION_DENIED"
    finally:
        c.close()


def test_socket_state(tmp_path: Path, kubelet: FakeKubelet, sockdir: Path) -> None:
    assert socket_state(sockdir / "kubelet.sock") == "ok"
    assert socket_state(tmp_path / "nothing") == "absent"
    (tmp_path / "file").write_text("")
    assert socket_state(tmp_path / "file") == "absent"  # not a socket


# ---- the collector ------------------------------------------------------------------------


def test_attribution_end_to_end(tmp_path: Path, kubelet: FakeKubelet, sockdir: Path) -> None:
    """H100 held by one container; T4 shared by two pods (time-slicing replicas) and named by a
    Slurm prolog; the H100's processes: one in the pod, one in a Slurm step, one on the host."""
    nvml = FakeNvml()
    nvml.gpus[0].processes = [(4242, 2**30), (4343, 2**30), (4444, 2**30)]
    nvml.gpus[1].processes = [(5151, 2**30)]
    kubelet.pods = [
        kubelet.pod("ml", "train-0", ("trainer", "nvidia.com/gpu", [H100])),
        kubelet.pod("web", "infer-a", ("server", "nvidia.com/gpu.shared", [f"{T4}::0"])),
        kubelet.pod("web", "infer-b", ("server", "nvidia.com/gpu.shared", [f"{T4}::1"])),
        kubelet.pod("ml", "nic", ("c", "rdma/hca", ["mlx5_0"])),  # not a GPU
        kubelet.pod("ml", "gone", ("d", "nvidia.com/gpu", ["GPU-gone"])),  # a GPU NVML lacks
    ]
    jobs = tmp_path / "jobmap"
    jobs.mkdir()
    (jobs / "1").write_text("777\n")
    cgroups = {4242: POD_V2_SYSTEMD, 4343: SLURM_V2_BATCH, 4444: "0::/user.slice\n"}
    cgroups[5151] = POD_V1_CGROUPFS
    c = collector(tmp_path, nvml, socket=sockdir / "kubelet.sock", job_dir=jobs, cgroups=cgroups)
    try:
        got = samples(c)
    finally:
        c.close()
    assert got["dcwatch_gpu_allocation_info"] == [
        {"gpu": "0", "uuid": H100, "namespace": "ml", "pod": "train-0", "container": "trainer"},
        {"gpu": "1", "uuid": T4, "namespace": "web", "pod": "infer-a", "container": "server"},
        {"gpu": "1", "uuid": T4, "namespace": "web", "pod": "infer-b", "container": "server"},
    ]
    assert got["dcwatch_gpu_job_info"] == [
        {"gpu": "0", "uuid": H100, "hpc_job": "4243"},  # from the process's cgroup
        {"gpu": "1", "uuid": T4, "hpc_job": "777"},  # from the mapping directory
    ]
    # 4444, a host process, has no owner; 5151 is in a pod on the shared T4: which is unknown.
    assert got["dcwatch_gpu_process_owner_info"] == [
        owner_info("0", H100, "4242", ("ml", "train-0", "trainer"), pod_uid=UID),
        owner_info("0", H100, "4343", job="4243"),
        owner_info("1", T4, "5151", pod_uid=UID),
    ]


def test_mig_devices_map_to_their_gpu_and_processes_to_their_slice(
    tmp_path: Path, kubelet: FakeKubelet, sockdir: Path
) -> None:
    gpu = mig_gpu(0)
    big, mid = gpu.migs[0], gpu.migs[1]
    assert big is not None and mid is not None
    nvml = FakeNvml([gpu])
    kubelet.pods = [
        kubelet.pod("ml", "a", ("main", "nvidia.com/mig-3g.40gb", [big.uuid])),
        kubelet.pod("ml", "b", ("main", "nvidia.com/mig-2g.20gb", [mid.uuid])),
    ]
    cgroups = {6001: POD_V2_SYSTEMD, 6002: POD_V1_CGROUPFS}
    c = collector(tmp_path, nvml, socket=sockdir / "kubelet.sock", cgroups=cgroups)
    try:
        got = samples(c)
    finally:
        c.close()
    alloc = got["dcwatch_gpu_allocation_info"]
    assert [(s["gpu"], s["uuid"], s["pod"]) for s in alloc] == [
        ("0", gpu.uuid, "a"),
        ("0", gpu.uuid, "b"),
    ]
    # Each process is on a MIG device one container holds: named, though the GPU is shared.
    owners = {s["pid"]: s["pod"] for s in got["dcwatch_gpu_process_owner_info"]}
    assert owners == {"6001": "a", "6002": "b"}


def test_nothing_there_is_no_data_and_cheap(tmp_path: Path) -> None:
    nvml = FakeNvml(library_missing=True)
    c = collector(tmp_path, nvml, socket=tmp_path / "no.sock", job_dir=tmp_path / "no-dir")
    with pytest.raises(NoDataError):
        list(c.collect())
    assert c.read_errors() == 0
    c.close()


def test_gpus_without_pods_or_jobs_export_nothing(tmp_path: Path) -> None:
    nvml = FakeNvml([h100(0)])
    c = collector(tmp_path, nvml, socket=None, cgroups={4242: "0::/user.slice\n"})
    assert samples(c) == {}
    c.close()


def test_processes_off_reads_no_processes(tmp_path: Path) -> None:
    nvml = FakeNvml([h100(0)])
    c = collector(tmp_path, nvml, socket=None, cgroups={4242: SLURM_V2_BATCH}, processes=False)
    assert samples(c) == {}
    assert not any("Processes" in fn for fn in nvml.calls)
    c.close()


def test_kubelet_down_is_counted_and_retried_after_the_interval(
    tmp_path: Path, kubelet: FakeKubelet, sockdir: Path
) -> None:
    kubelet.pods = [kubelet.pod("ml", "train-0", ("trainer", "nvidia.com/gpu", [H100]))]
    kubelet.fail = grpc.StatusCode.UNAVAILABLE
    c = collector(tmp_path, FakeNvml([h100(0)]), socket=sockdir / "kubelet.sock")
    now = [0.0]
    c.clock = lambda: now[0]
    try:
        assert "dcwatch_gpu_allocation_info" not in samples(c)
        assert c.read_errors() == 1
        kubelet.fail = None
        assert "dcwatch_gpu_allocation_info" not in samples(c)  # cached until the interval
        assert kubelet.calls == 1
        now[0] = 10.0
        assert len(samples(c)["dcwatch_gpu_allocation_info"]) == 1
        assert kubelet.calls == 2
    finally:
        c.close()


def test_without_grpcio_the_api_is_absent(
    tmp_path: Path, kubelet: FakeKubelet, sockdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = client_mod.importlib.import_module

    def no_grpc(name: str) -> ModuleType:
        if name == "grpc":
            raise ImportError("No module named 'grpc'")
        return real(name)

    monkeypatch.setattr(client_mod.importlib, "import_module", no_grpc)
    kubelet.pods = [kubelet.pod("ml", "train-0", ("trainer", "nvidia.com/gpu", [H100]))]
    c = collector(tmp_path, FakeNvml([h100(0)]), socket=sockdir / "kubelet.sock")
    c.clock = lambda: 1e9
    assert samples(c) == {}
    assert kubelet.calls == 0 and c.read_errors() == 0
    c.close()


def test_golden_output_with_the_fake_nvml(
    tmp_path: Path, kubelet: FakeKubelet, sockdir: Path, update_golden: bool
) -> None:
    kubelet.pods = [kubelet.pod("ml", "train-0", ("trainer", "nvidia.com/gpu", [H100]))]
    jobs = tmp_path / "jobmap"
    jobs.mkdir()
    (jobs / T4).write_text("4243\n")  # the prolog and the step's cgroup agree: one job
    nvml = FakeNvml()
    cgroups = {4242: POD_V2_SYSTEMD, 4343: POD_V2_SYSTEMD, 5151: SLURM_V2_BATCH}
    c = collector(tmp_path, nvml, socket=sockdir / "kubelet.sock", job_dir=jobs, cgroups=cgroups)
    try:
        got = encode(list(c.collect()), accept="")[0].decode()
    finally:
        c.close()
    if update_golden:
        GOLDEN.write_text(got)
    assert got == GOLDEN.read_text(), f"output differs from {GOLDEN}; --update-golden if intended"
    assert got.count('hpc_job="4243"') == 2 and got.count('pod="train-0"') == 3
