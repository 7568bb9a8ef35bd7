"""dcwatch node agent: serves this node's GPU, power, thermal and network metrics."""
