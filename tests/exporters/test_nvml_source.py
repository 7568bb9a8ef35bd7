"""The NVML chokepoint (exporters/sources/nvml.py), and the fake NVML's fidelity to pynvml."""

from __future__ import annotations

import ctypes
import inspect
import logging
import re
import sys
from pathlib import Path

import pytest

from dcwatch.exporters import gpu
from dcwatch.exporters.gpu import metrics as gpu_metrics
from dcwatch.exporters.sources import nvml as nv
from dcwatch.exporters.sources.nvml import (
    GpuLostError,
    Nvml,
    NvmlCallError,
    NvmlInitError,
    NvmlUnavailableError,
)
from tests.fakes import fake_nvml
from tests.fakes.fake_nvml import FakeHandle, FakeNvml

try:  # the real bindings, only to compare names and numbers: nothing here loads libnvidia-ml
    import pynvml
except ImportError:  # pragma: no cover - nvidia-ml-py is a dev dependency
    pynvml = None

needs_pynvml = pytest.mark.skipif(pynvml is None, reason="nvidia-ml-py not installed")


def ready(fake: FakeNvml | None = None) -> tuple[Nvml, FakeNvml]:
    fake = fake or FakeNvml()
    n = Nvml(fake)
    n.init()
    return n, fake


# ---- our constants and the fake match the real pynvml -----------------------------------------

OUR_TO_PYNVML = {
    **{k: "NVML_" + k for k in dir(nv) if k.startswith(("ERROR_", "FI_DEV_", "PERF_POLICY_"))},
    **{
        k: "NVML_" + k
        for k in (
            "SUCCESS",
            "TEMPERATURE_GPU",
            "CLOCK_SM",
            "CLOCK_MEM",
            "PCIE_UTIL_TX_BYTES",
            "PCIE_UTIL_RX_BYTES",
            "MEMORY_ERROR_TYPE_CORRECTED",
            "MEMORY_ERROR_TYPE_UNCORRECTED",
            "VOLATILE_ECC",
            "AGGREGATE_ECC",
            "NVLINK_MAX_LINKS",
            "NVLINK_ERROR_DL_REPLAY",
            "NVLINK_ERROR_DL_RECOVERY",
            "NVLINK_ERROR_DL_CRC_FLIT",
            "NVLINK_ERROR_DL_CRC_DATA",
            "DEVICE_MIG_ENABLE",
            "PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS",
            "PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR",
        )
    },
    "EVENT_TYPE_XID_CRITICAL_ERROR": "nvmlEventTypeXidCriticalError",
    "MEMORY_V2": "nvmlMemory_v2",
}


@needs_pynvml
@pytest.mark.parametrize("ours", sorted(OUR_TO_PYNVML))
def test_constants_match_pynvml(ours: str) -> None:
    assert getattr(nv, ours) == getattr(pynvml, OUR_TO_PYNVML[ours])


@needs_pynvml
def test_fake_lane_field_ids_match_pynvml() -> None:
    names = {
        "replay": "REPLAY",
        "recovery": "RECOVERY",
        "crc_flit": "CRC_FLIT",
        "crc_data": "CRC_DATA",
    }
    for kind, name in names.items():
        for lane in range(12):
            want = getattr(pynvml, f"NVML_FI_DEV_NVLINK_{name}_ERROR_COUNT_L{lane}")
            assert fake_nvml.legacy_nvlink_field(kind, lane) == want


def test_fake_follows_the_header_for_the_old_nvlink_fields() -> None:
    """Ids 32..119 are lanes with the link in scopeId: 'link 5' read with scope 0 is not link 5."""
    n, _ = ready()
    h = FakeHandle(0)
    replay_l5 = fake_nvml.legacy_nvlink_field("replay", 5)
    lane0 = fake_nvml.legacy_nvlink_field("replay", 0)
    got = n.field_values(h, [(replay_l5, 0), (lane0, 5), (nv.FI_DEV_NVLINK_ERROR_DL_REPLAY, 5)])
    assert got is not None
    assert got[0].value is None  # lane 5 of link 0: the fake's links have 4 lanes
    assert got[1].value == fake_nvml.lane_count(5, 0)  # lane 0 of link 5: not the link's total
    assert got[2].value == 5  # the DL field is the link's total
    lanes = [fake_nvml.legacy_nvlink_field("replay", lane) for lane in range(fake_nvml.LANES)]
    per_lane = n.field_values(h, [(fid, 5) for fid in lanes])
    assert per_lane is not None and sum(fv.value or 0 for fv in per_lane) == 5


def test_fake_memory_versions_follow_the_header() -> None:
    n, fake = ready()
    g = fake.gpus[0]
    v1 = n.call("nvmlDeviceGetMemoryInfo", FakeHandle(0))
    v2 = n.call("nvmlDeviceGetMemoryInfo", FakeHandle(0), nv.MEMORY_V2)
    assert v1.used == g.memory_used + g.memory_reserved  # v1 counts reserved as used
    assert (v2.used, v2.reserved) == (g.memory_used, g.memory_reserved)
    assert v1.free == v2.free and v1.total == v2.total == v2.used + v2.reserved + v2.free
    with pytest.raises(NvmlCallError) as e:
        n.call("nvmlDeviceGetMemoryInfo", FakeHandle(0), 0x01000018, expect=nv.ANY)
    assert e.value.code == fake_nvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH


def test_reset_required_is_lost() -> None:
    n, fake = ready()
    fake.lose_gpu(0, fake_nvml.NVML_ERROR_RESET_REQUIRED)
    with pytest.raises(GpuLostError) as e:
        n.call("nvmlDeviceGetPowerUsage", FakeHandle(0))
    assert e.value.code == nv.ERROR_RESET_REQUIRED
    assert n.errors == 0


@needs_pynvml
def test_violation_policies_match_pynvml() -> None:
    for policy, label in gpu_metrics.VIOLATION_POLICIES:
        assert getattr(pynvml, "NVML_PERF_POLICY_" + label.upper()) == policy


@needs_pynvml
def test_value_types_and_clock_reasons_match_pynvml() -> None:
    union = {name for name, _ in pynvml.c_nvmlValue_t._fields_}
    assert set(nv.VALUE_MEMBERS.values()) <= union
    assert nv.VALUE_MEMBERS == {
        pynvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
        pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
        pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
        pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
        pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
        pynvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
        pynvml.NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
    }
    named = {
        "gpu_idle": "GpuIdle",
        "applications_clocks_setting": "ApplicationsClocksSetting",
        "sw_power_cap": "SwPowerCap",
        "hw_slowdown": "HwSlowdown",
        "sync_boost": "SyncBoost",
        "sw_thermal_slowdown": "SwThermalSlowdown",
        "hw_thermal_slowdown": "HwThermalSlowdown",
        "hw_power_brake_slowdown": "HwPowerBrakeSlowdown",
        "display_clock_setting": "DisplayClockSetting",
    }
    for bit, label in gpu_metrics.CLOCK_REASONS:
        assert getattr(pynvml, "nvmlClocksEventReason" + named[label]) == bit
        assert getattr(pynvml, "nvmlClocksThrottleReason" + named[label]) == bit
    for bit, label in gpu_metrics.EXTRA_CLOCK_REASONS:
        camel = "".join(w.capitalize() for w in label.split("_"))
        assert getattr(pynvml, "nvmlClocksThrottleReason" + camel) == bit


@needs_pynvml
def test_fake_constants_errors_and_structs_match_pynvml() -> None:
    for name in dir(fake_nvml):
        if name.startswith(("NVML_", "nvmlEventType", "nvmlClocks", "nvmlMemory_v", "nvmlTemp")):
            assert getattr(fake_nvml, name) == getattr(pynvml, name), name
        if name.startswith("NVMLError_"):
            ours = getattr(fake_nvml, name)
            theirs = getattr(pynvml, name)
            assert ours().value == theirs().value, name
    for struct in (
        "c_nvmlFieldValue_t",
        "c_nvmlValue_t",
        "c_nvmlMemory_t",
        "c_nvmlMemory_v2_t",
        "c_nvmlViolationTime_t",
        "c_nvmlUtilization_t",
        "nvmlPciInfo_t",
    ):
        ours, theirs = getattr(fake_nvml, struct), getattr(pynvml, struct)
        assert [n for n, _ in ours._fields_] == [n for n, _ in theirs._fields_], struct
        assert ctypes.sizeof(ours) == ctypes.sizeof(theirs), struct
    # NVMLError(code) gives the subclass for that code, as in pynvml
    assert type(fake_nvml.NVMLError(3)).__name__ == type(pynvml.NVMLError(3)).__name__


@needs_pynvml
def test_fake_functions_exist_in_pynvml_with_same_arity() -> None:
    for name, fn in inspect.getmembers(FakeNvml, inspect.isfunction):
        if not name.startswith("nvml"):
            continue
        assert hasattr(pynvml, name), f"{name} is not a pynvml function"
        ours = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
        theirs = list(inspect.signature(getattr(pynvml, name)).parameters.values())
        required = [p for p in theirs if p.default is inspect.Parameter.empty]
        assert len(required) <= len(ours) <= len(theirs), name


@needs_pynvml
def test_collector_calls_only_functions_pynvml_has() -> None:
    # every module of the collector's folder, exporters/gpu/
    src = "".join(p.read_text() for p in Path(gpu.__file__).parent.glob("*.py"))
    called = set(re.findall(r'"(nvml[A-Za-z_0-9]+)"', src))
    assert called, "no NVML function names found"
    for name in called:
        assert hasattr(pynvml, name), name
        assert hasattr(FakeNvml, name), f"the fake lacks {name}"


# ---- init ------------------------------------------------------------------------------------


def test_init_once_and_shutdown_once() -> None:
    n, fake = ready()
    n.init()
    assert fake.init_calls == 1 and n.initialized
    n.shutdown()
    n.shutdown()
    assert fake.shutdown_calls == 1 and fake.initialized == 0


@pytest.mark.parametrize("flag", ["library_missing", "driver_not_loaded"])
def test_init_no_library_or_driver_is_unavailable_and_retried_later(flag: str) -> None:
    now = [0.0]
    fake = FakeNvml(**{flag: True})
    n = Nvml(fake, retry_interval=60, clock=lambda: now[0])
    with pytest.raises(NvmlUnavailableError):
        n.init()
    setattr(fake, flag, False)
    now[0] = 30
    with pytest.raises(NvmlUnavailableError):
        n.init()  # remembered: not retried yet
    assert fake.init_calls == 1
    now[0] = 61
    n.init()
    assert fake.init_calls == 2 and n.initialized


def test_init_other_failure_is_an_init_error() -> None:
    class Mismatch(FakeNvml):
        def nvmlInit(self) -> None:
            raise fake_nvml.NVMLError(fake_nvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH)

    with pytest.raises(NvmlInitError, match="version mismatch"):
        Nvml(Mismatch()).init()


def test_pynvml_not_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # hides it: import raises ImportError
    with pytest.raises(NvmlUnavailableError, match="pynvml is not installed"):
        Nvml(None).init()


# ---- call ------------------------------------------------------------------------------------


def test_call_absent_codes_are_none_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    n, fake = ready()
    h = FakeHandle(1)
    caplog.set_level(logging.DEBUG, "dcwatch.nvml")
    assert n.call("nvmlDeviceGetNumFans", h) is None
    assert n.call("nvmlDeviceGetNumFans", h) is None
    fake.gpus[1].failing["nvmlDeviceGetName"] = fake_nvml.NVML_ERROR_NO_PERMISSION
    assert n.call("nvmlDeviceGetName", h) is None
    assert n.call("nvmlDeviceGetNoSuchThing", h) is None
    assert n.errors == 0
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("nvmlDeviceGetNumFans" in m for m in msgs) == 1
    assert all(r.levelno == logging.DEBUG for r in caplog.records)


def test_call_lost_raises(caplog: pytest.LogCaptureFixture) -> None:
    n, fake = ready()
    fake.lose_gpu(0)
    with pytest.raises(GpuLostError) as e:
        n.call("nvmlDeviceGetPowerUsage", FakeHandle(0))
    assert e.value.fn == "nvmlDeviceGetPowerUsage"
    assert n.call("nvmlDeviceGetPowerUsage", FakeHandle(1)) == 27500


def test_call_other_error_counted_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    n, fake = ready()
    fake.gpus[0].failing["nvmlDeviceGetPowerUsage"] = fake_nvml.NVML_ERROR_UNKNOWN
    caplog.set_level(logging.WARNING, "dcwatch.nvml")
    assert n.call("nvmlDeviceGetPowerUsage", FakeHandle(0)) is None
    assert n.call("nvmlDeviceGetPowerUsage", FakeHandle(0)) is None
    assert n.errors == 2
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_call_expected_codes_are_raised() -> None:
    n, _ = ready()
    es = n.call("nvmlEventSetCreate")
    with pytest.raises(NvmlCallError) as e:
        n.call("nvmlEventSetWait", es, 1, expect=(nv.ERROR_TIMEOUT,))
    assert e.value.code == nv.ERROR_TIMEOUT
    with pytest.raises(NvmlCallError) as e:
        n.call("nvmlDeviceGetNumFans", FakeHandle(1), expect=nv.ANY)
    assert e.value.code == nv.ERROR_NOT_SUPPORTED
    with pytest.raises(NvmlCallError) as e:
        n.call("nvmlNoSuchFunction", expect=nv.ANY)
    assert e.value.code == nv.ERROR_FUNCTION_NOT_FOUND
    assert n.errors == 0


def test_library_mismatch_is_absent() -> None:
    class Old(FakeNvml):
        def nvmlDeviceGetComputeRunningProcesses(self, h):  # type: ignore[no-untyped-def]
            raise fake_nvml.NVMLLibraryMismatchError("unversioned function ... _v3")

    n, _ = ready(Old())
    assert n.call("nvmlDeviceGetComputeRunningProcesses", FakeHandle(0)) is None
    assert n.errors == 0


# ---- field values ----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["pynvml", "fake"])
def test_decode_field_reads_the_member_named_by_value_type(which: str) -> None:
    if which == "pynvml" and pynvml is None:
        pytest.skip("nvidia-ml-py not installed")
    module = pynvml if which == "pynvml" else fake_nvml
    fv = module.c_nvmlFieldValue_t()  # type: ignore[attr-defined]
    cases = [
        (0, "dVal", 2.5),
        (1, "uiVal", 4_000_000_000),
        (2, "ulVal", 7),
        (3, "ullVal", 2**40 + 3),
        (4, "sllVal", -(2**40)),
        (5, "siVal", -5),
        (6, "usVal", 65000),
    ]
    for vtype, member, value in cases:
        fv.value.ullVal = 0
        setattr(fv.value, member, value)
        fv.valueType = vtype
        assert nv.decode_field(fv) == value
    fv.valueType = 42
    assert nv.decode_field(fv) is None


def test_field_values_per_field_codes() -> None:
    n, fake = ready()
    ids = [
        (nv.FI_DEV_MEMORY_TEMP, 0),
        (nv.FI_DEV_TOTAL_ENERGY_CONSUMPTION, 0),
        (nv.FI_DEV_NVLINK_GET_STATE, 17),
        (nv.FI_DEV_RETIRED_SBE, 0),
    ]
    got = n.field_values(FakeHandle(0), ids)
    assert got is not None
    assert [fv.value for fv in got] == [63, 123456789012, 0, None]
    assert got[3].code == nv.ERROR_NOT_SUPPORTED
    got = n.field_values(FakeHandle(1), ids)
    assert got is not None and [fv.value for fv in got] == [None, None, None, 2]
    assert n.errors == 0
    assert n.field_values(FakeHandle(0), []) == []
    fake.lose_gpu(0)
    with pytest.raises(GpuLostError):
        n.field_values(FakeHandle(0), ids)


def test_handle_key_equal_for_pointers_to_the_same_device() -> None:
    class Dev(ctypes.Structure):
        _fields_ = [("x", ctypes.c_int)]

    d = Dev()
    a, b = ctypes.pointer(d), ctypes.cast(ctypes.addressof(d), ctypes.POINTER(Dev))
    assert a is not b
    assert nv.handle_key(a) == nv.handle_key(b)
    assert nv.handle_key(FakeHandle(3)) == nv.handle_key(FakeHandle(3))


def test_text() -> None:
    assert nv.text(b"00000000:18:00.0\x00") == "00000000:18:00.0"
    assert nv.text(None) == ""
    assert nv.text(" H100 ") == "H100"
