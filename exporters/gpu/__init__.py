"""The GPU collector (NVML): the collector, its metric table, what each GPU supports, XID events."""
