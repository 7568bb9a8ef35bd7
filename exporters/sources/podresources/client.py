"""Calls the kubelet's ``v1.PodResourcesLister/List`` over its unix socket.

grpcio comes with the ``kubernetes`` extra (``pip install 'dcwatch[kubernetes]'``, in the
image): it is imported when the socket is first there, never by a node without a kubelet.
Requests are the empty ``ListPodResourcesRequest``; answers are decoded by :mod:`.wire`.
"""

from __future__ import annotations

import importlib
import os
import stat
from pathlib import Path
from typing import Any

from dcwatch.exporters.sources.podresources.wire import Allocation, WireError, decode_list_response

LIST_METHOD = "/v1.PodResourcesLister/List"
# A node with hundreds of pods answers in tens of KiB; far more is not a kubelet's answer.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
INSTALL_HINT = "pip install 'dcwatch[kubernetes]'"


class PodResourcesUnavailableError(Exception):
    """The API cannot be used here: no grpcio, or the socket is not accessible to this user."""


class PodResourcesError(Exception):
    """The call failed (kubelet down, deadline exceeded, an answer that does not decode)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"List: {code}: {message}")
        self.code = code


def socket_state(path: Path) -> str:
    """``"absent"``, ``"denied"`` (there but not ours to connect to) or ``"ok"``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "absent"
    except PermissionError:
        return "denied"  # a root-only directory above it
    except OSError:
        return "absent"
    if not stat.S_ISSOCK(st.st_mode):
        return "absent"
    return "ok" if os.access(path, os.R_OK | os.W_OK) else "denied"


class PodResourcesClient:
    """One gRPC channel to the kubelet, opened at the first call and kept (gRPC reconnects)."""

    def __init__(self, socket: Path, timeout: float = 2.0) -> None:
        self.socket = socket
        self.timeout = timeout
        self._grpc: Any = None
        self._channel: Any = None
        self._call: Any = None

    def _ensure(self) -> Any:
        if self._call is None:
            try:
                self._grpc = importlib.import_module("grpc")
            except ImportError as e:
                raise PodResourcesUnavailableError(f"grpcio is not installed ({e})") from None
            self._channel = self._grpc.insecure_channel(
                f"unix://{self.socket.absolute()}",
                options=[
                    ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
                    ("grpc.enable_http_proxy", 0),  # a unix socket: never through a proxy
                ],
            )
            self._call = self._channel.unary_unary(
                LIST_METHOD,
                request_serializer=lambda _: b"",  # ListPodResourcesRequest has no fields
                response_deserializer=lambda raw: raw,
            )
        return self._call

    def list(self) -> list[Allocation]:
        """Every device id the kubelet has given to a container."""
        call = self._ensure()
        try:
            raw = call(None, timeout=self.timeout)
        except self._grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            details = e.details() if hasattr(e, "details") else str(e)
            name = getattr(code, "name", "UNKNOWN")
            raise PodResourcesError(name, str(details)) from None
        try:
            return decode_list_response(raw)
        except WireError as e:
            raise PodResourcesError("UNDECODABLE", str(e)) from None

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = self._call = None
