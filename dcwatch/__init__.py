"""dcwatch: monitoring and anomaly detection for GPU/AI datacenters.

This package is the core that the node agent (:mod:`dcwatch.agent`, :mod:`dcwatch.exporters`) and
the analyzer (:mod:`dcwatch.detectors`) share. It imports nothing from them.
"""

__version__ = "0.1.0"
