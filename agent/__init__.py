"""dcwatch node agent: serves this node's GPU, power, thermal and network metrics."""

__version__ = "0.1.0"
