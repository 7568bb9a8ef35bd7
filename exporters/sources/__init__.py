"""Readers and parsers of sysfs, procfs and NVML. They know nothing of Prometheus."""
