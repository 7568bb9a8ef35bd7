"""The kubelet's pod-resources API (v1): which pod and container holds which device.

:mod:`.wire` decodes the ``List`` answer (protobuf, written to ``api.proto`` beside it);
:mod:`.client` calls ``List`` over the kubelet's unix socket with grpcio (the ``kubernetes``
extra). Neither knows of Prometheus.
"""

from dcwatch.exporters.sources.podresources.wire import Allocation, decode_list_response

__all__ = ["Allocation", "decode_list_response"]
