"""Fakes of hardware libraries for tests (NVML)."""
