"""The ``gpu`` collector's metric table, and the clocks-event reasons it labels."""

from __future__ import annotations

from dcwatch.exposition import MetricSpec

GPU = ("gpu", "uuid")

Labels = tuple[str, ...]
Sample = tuple[MetricSpec, float, Labels]  # labels after gpu, uuid

UP = MetricSpec(
    "dcwatch_gpu_up", "1 if the GPU answers NVML, 0 if it is lost (fell off the bus)", GPU
)
INFO = MetricSpec(
    "dcwatch_gpu_info",
    "GPU identity (always 1)",
    (
        *GPU,
        "name",
        "serial",
        "pci_bus_id",
        "vbios_version",
        "driver_version",
        "cuda_version",
        "mig_mode",
    ),
)
UTIL = MetricSpec(
    "dcwatch_gpu_utilization_ratio",
    "Fraction of the last sample period during which a kernel was running on the GPU",
    GPU,
)
MEM_UTIL = MetricSpec(
    "dcwatch_gpu_memory_utilization_ratio",
    "Fraction of the last sample period during which device memory was being read or written",
    GPU,
)
MEM_USED = MetricSpec(
    "dcwatch_gpu_memory_used_bytes",
    "Framebuffer memory in use by allocations (reserved memory not counted, as nvidia-smi)",
    GPU,
)
MEM_RESERVED = MetricSpec(
    "dcwatch_gpu_memory_reserved_bytes", "Framebuffer memory the driver reserves for itself", GPU
)
ENC_UTIL = MetricSpec(
    "dcwatch_gpu_encoder_utilization_ratio",
    "Fraction of the last sample period during which the video encoder was busy",
    GPU,
)
DEC_UTIL = MetricSpec(
    "dcwatch_gpu_decoder_utilization_ratio",
    "Fraction of the last sample period during which the video decoder was busy",
    GPU,
)
MEM_FREE = MetricSpec("dcwatch_gpu_memory_free_bytes", "Framebuffer memory free", GPU)
MEM_TOTAL = MetricSpec("dcwatch_gpu_memory_total_bytes", "Framebuffer memory installed", GPU)
TEMP = MetricSpec("dcwatch_gpu_temperature_celsius", "GPU core temperature", GPU)
MEM_TEMP = MetricSpec("dcwatch_gpu_memory_temperature_celsius", "GPU memory (HBM) temperature", GPU)
POWER = MetricSpec("dcwatch_gpu_power_usage_watts", "Power drawn by the GPU board", GPU)
POWER_LIMIT = MetricSpec("dcwatch_gpu_power_limit_watts", "Power limit the GPU enforces now", GPU)
POWER_DEFAULT_LIMIT = MetricSpec(
    "dcwatch_gpu_power_default_limit_watts", "Default power limit of the GPU", GPU
)
ENERGY = MetricSpec(
    "dcwatch_gpu_energy_joules_total",
    "Energy consumed by the GPU since the driver was loaded",
    GPU,
    kind="counter",
)
CLOCK = MetricSpec(
    "dcwatch_gpu_clock_hertz", "Current clock frequency (clock: sm, memory)", (*GPU, "clock")
)
CLOCK_MAX = MetricSpec(
    "dcwatch_gpu_clock_max_hertz", "Maximum clock frequency (clock: sm, memory)", (*GPU, "clock")
)
CLOCK_REASON = MetricSpec(
    "dcwatch_gpu_clocks_event_reason_active",
    "1 if this reason is holding the clocks down now (clocks event / throttle reason)",
    (*GPU, "reason"),
)
CLOCK_EVENT_TIME = MetricSpec(
    "dcwatch_gpu_clocks_event_seconds_total",
    "Time the clocks were held below the requested clocks, by reason (NVML violation counters: "
    "power, thermal, sync_boost, board_limit, low_utilization, reliability, total_app_clocks, "
    "total_base_clocks)",
    (*GPU, "reason"),
    kind="counter",
)
PSTATE = MetricSpec(
    "dcwatch_gpu_performance_state", "Performance state (0 = P0, fastest, .. 15 = P15)", GPU
)
FAN = MetricSpec(
    "dcwatch_gpu_fan_speed_ratio",
    "Fan speed as a fraction of the fan's intended speed (NVML's percent / 100; may exceed 1)",
    (*GPU, "fan"),
)
PCIE_GEN = MetricSpec("dcwatch_gpu_pcie_link_generation", "Current PCIe link generation", GPU)
PCIE_GEN_MAX = MetricSpec(
    "dcwatch_gpu_pcie_link_max_generation", "Maximum PCIe link generation of GPU and slot", GPU
)
PCIE_WIDTH = MetricSpec("dcwatch_gpu_pcie_link_width", "Current PCIe link width (lanes)", GPU)
PCIE_WIDTH_MAX = MetricSpec(
    "dcwatch_gpu_pcie_link_max_width", "Maximum PCIe link width (lanes)", GPU
)
PCIE_THROUGHPUT = MetricSpec(
    "dcwatch_gpu_pcie_throughput_bytes_per_second",
    "PCIe throughput over a 20 ms sample (direction: tx from the GPU, rx to the GPU; NVML's "
    "KB/s taken as 1024 bytes/s)",
    (*GPU, "direction"),
)
PCIE_REPLAY = MetricSpec(
    "dcwatch_gpu_pcie_replays_total",
    "PCIe replays (link-level retransmissions)",
    GPU,
    kind="counter",
)
NVLINK_UP = MetricSpec("dcwatch_gpu_nvlink_up", "1 if the NVLink link is active", (*GPU, "link"))
NVLINK_ERRORS = MetricSpec(
    "dcwatch_gpu_nvlink_errors_total",
    "NVLink data-link errors (type: replay, recovery, crc_flit, crc_data)",
    (*GPU, "link", "type"),
    kind="counter",
)
ECC = MetricSpec(
    "dcwatch_gpu_ecc_errors_total",
    "ECC memory errors (type: corrected, uncorrected; scope: volatile since the driver loaded, "
    "aggregate over the GPU's life)",
    (*GPU, "type", "scope"),
    kind="counter",
)
RETIRED = MetricSpec(
    "dcwatch_gpu_retired_pages",
    "Framebuffer pages retired (cause: single_bit, double_bit ECC errors)",
    (*GPU, "cause"),
)
RETIRED_PENDING = MetricSpec(
    "dcwatch_gpu_retired_pages_pending", "1 if a page awaits retirement at the next reset", GPU
)
REMAPPED = MetricSpec(
    "dcwatch_gpu_remapped_rows",
    "Memory rows remapped (type: correctable, uncorrectable errors)",
    (*GPU, "type"),
)
REMAPPED_PENDING = MetricSpec(
    "dcwatch_gpu_remapped_rows_pending", "1 if a row remap awaits the next GPU reset", GPU
)
REMAPPED_FAILURE = MetricSpec(
    "dcwatch_gpu_remapped_rows_failure", "1 if a row remap has failed (GPU needs service)", GPU
)
XID = MetricSpec(
    "dcwatch_gpu_xid_errors_total",
    "XID critical errors reported by the driver, by XID code",
    (*GPU, "xid"),
    kind="counter",
)
XID_WATCHING = MetricSpec(
    "dcwatch_gpu_xid_watching", "1 if XID events of this GPU are being watched", GPU
)
PROC_MEM = MetricSpec(
    "dcwatch_gpu_process_memory_used_bytes",
    "GPU memory used by a compute process (only with gpu.processes)",
    (*GPU, "pid", "process"),
)
# MIG: one MIG device per (gpu_instance, compute_instance) of a GPU in MIG mode. Only what NVML
# answers per instance; utilisation, clocks, power and the like exist for the whole GPU only.
MIG = (*GPU, "gpu_instance", "compute_instance")
MIG_INFO = MetricSpec(
    "dcwatch_gpu_mig_info",
    "MIG device identity (always 1; profile e.g. 1g.10gb)",
    (*MIG, "profile", "mig_uuid"),
)
MIG_MEM_USED = MetricSpec(
    "dcwatch_gpu_mig_memory_used_bytes", "Memory in use in the MIG device's GPU instance", MIG
)
MIG_MEM_TOTAL = MetricSpec(
    "dcwatch_gpu_mig_memory_total_bytes", "Memory of the MIG device's GPU instance", MIG
)
MIG_PROC_MEM = MetricSpec(
    "dcwatch_gpu_mig_process_memory_used_bytes",
    "GPU memory used by a compute process in a MIG device (only with gpu.processes)",
    (*MIG, "pid", "process"),
)

METRICS = (
    UP, INFO, UTIL, MEM_UTIL, ENC_UTIL, DEC_UTIL, MEM_USED, MEM_FREE, MEM_RESERVED, MEM_TOTAL,
    TEMP, MEM_TEMP, POWER, POWER_LIMIT, POWER_DEFAULT_LIMIT, ENERGY, CLOCK, CLOCK_MAX,
    CLOCK_REASON, CLOCK_EVENT_TIME, PSTATE, FAN,
    PCIE_GEN, PCIE_GEN_MAX, PCIE_WIDTH, PCIE_WIDTH_MAX, PCIE_THROUGHPUT, PCIE_REPLAY,
    NVLINK_UP, NVLINK_ERRORS, ECC, RETIRED, RETIRED_PENDING, REMAPPED, REMAPPED_PENDING,
    REMAPPED_FAILURE, XID, XID_WATCHING, PROC_MEM, MIG_INFO, MIG_MEM_USED, MIG_MEM_TOTAL,
    MIG_PROC_MEM,
)  # fmt: skip

# Clocks event (formerly throttle) reasons: bit -> label. Bits are nvml.h's and never change.
CLOCK_REASONS: tuple[tuple[int, str], ...] = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)
EXTRA_CLOCK_REASONS = ((0x200, "board_limit"), (0x400, "reliability"))  # only if supported

# nvmlPerfPolicyType_t -> reason label of CLOCK_EVENT_TIME (nvmlDeviceGetViolationStatus)
VIOLATION_POLICIES: tuple[tuple[int, str], ...] = (
    (0, "power"),
    (1, "thermal"),
    (2, "sync_boost"),
    (3, "board_limit"),
    (4, "low_utilization"),
    (5, "reliability"),
    (10, "total_app_clocks"),
    (11, "total_base_clocks"),
)
