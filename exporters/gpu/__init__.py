"""The GPU collector (NVML): the collector, its metric table, what each GPU supports, XID events."""

# Importing the package registers the collector (see dcwatch.exporters.registry).
from dcwatch.exporters.gpu.collector import GpuCollector

__all__ = ["GpuCollector"]
