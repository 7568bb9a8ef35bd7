"""Decoding of the pod-resources ``ListPodResourcesResponse`` from protobuf's wire format.

A few dozen lines instead of generated stubs: the agent then needs grpcio alone, with no
protobuf runtime whose version must match the generator's. Only the fields dcwatch reads are
decoded (``api.proto``: pod_resources=1; PodResources name=1, namespace=2, containers=3;
ContainerResources name=1, devices=2; ContainerDevices resource_name=1, device_ids=2); every
other field, including those a newer kubelet adds, is skipped by its wire type, as protobuf does.
The tests encode answers with the real protobuf runtime from ``api.proto``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

VARINT, I64, LEN, I32 = 0, 1, 2, 5
_MAX_VARINT_BYTES = 10


class WireError(ValueError):
    """The bytes are not a valid protobuf message of the expected shape."""


@dataclass(frozen=True, slots=True)
class Allocation:
    """One device id given to one container (by a device plugin)."""

    namespace: str
    pod: str
    container: str
    resource: str
    device_id: str


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for i in range(pos, min(pos + _MAX_VARINT_BYTES, len(buf))):
        b = buf[i]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i + 1
        shift += 7
    raise WireError(f"truncated or overlong varint at byte {pos}")


def fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """``(field number, wire type, value)`` of each field of one message, in order.

    Length-delimited values are the raw bytes; fixed-width values their unsigned integer.
    """
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wtype = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wtype == VARINT:
            value, pos = _varint(buf, pos)
            yield number, wtype, value
        elif wtype == LEN:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise WireError(f"field {number}: {size} bytes past the end")
            yield number, wtype, buf[pos : pos + size]
            pos += size
        elif wtype in (I64, I32):
            width = 8 if wtype == I64 else 4
            if pos + width > end:
                raise WireError(f"field {number}: truncated fixed{width * 8}")
            yield number, wtype, int.from_bytes(buf[pos : pos + width], "little")
            pos += width
        else:  # 3, 4: groups, never used by proto3; 6, 7: invalid
            raise WireError(f"field {number}: unsupported wire type {wtype}")


def _string(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise WireError("expected a length-delimited string")
    return value.decode("utf-8", "replace")


def _messages(buf: bytes, number: int) -> Iterator[bytes]:
    for n, wtype, value in fields(buf):
        if n == number:
            if wtype != LEN or not isinstance(value, bytes):
                raise WireError(f"field {number}: expected a message")
            yield value


def _strings(buf: bytes, *numbers: int) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {n: [] for n in numbers}
    for n, _, value in fields(buf):
        if n in out:
            out[n].append(_string(value))
    return out


def decode_list_response(buf: bytes) -> list[Allocation]:
    """Every (pod, container, device id) of a ``ListPodResourcesResponse``."""
    out: list[Allocation] = []
    for pod in _messages(buf, 1):
        names = _strings(pod, 1, 2)
        pod_name, namespace = "".join(names[1][-1:]), "".join(names[2][-1:])
        for container in _messages(pod, 3):
            container_name = "".join(_strings(container, 1)[1][-1:])
            for devices in _messages(container, 2):
                d = _strings(devices, 1, 2)
                resource = "".join(d[1][-1:])  # proto3: the last occurrence of a scalar wins
                out.extend(
                    Allocation(namespace, pod_name, container_name, resource, device_id)
                    for device_id in d[2]
                )
    return out
