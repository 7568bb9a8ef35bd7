"""The two OpenSSL settings Python's ``ssl`` module cannot express, set through libssl directly.

exporter-toolkit (Go) has ``RequireAnyClientCert``/``RequestClientCert``: ask for a client
certificate and accept any, unverified. Python's ``ssl`` verifies every certificate it asks for,
so a self-signed one fails the handshake. OpenSSL's answer is a verify callback that accepts
everything; Python 3.11 offers no way to install one, so this does it through ``ctypes`` on the
libssl that CPython's ``_ssl`` is linked with. Likewise for a list of key-exchange groups
(``set_ecdh_curve`` takes one).

Each function returns False where this cannot be done safely (not CPython, OpenSSL linked
statically with hidden symbols, or the context's layout not the one checked for); the caller
then refuses the setting instead of serving something different from what was asked.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import ssl
import sys

log = logging.getLogger("dcwatch.web")

_VERIFY_PEER = 0x01
_VERIFY_FAIL_IF_NO_PEER_CERT = 0x02
_CTRL_SET_GROUPS_LIST = 92  # SSL_CTX_set1_groups_list is a macro over SSL_CTX_ctrl
_VerifyCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def _accept(_preverify_ok: int, _store: int | None) -> int:
    return 1  # any certificate, as Go's RequireAnyClientCert: presence is all that is asked


@functools.cache
def _native() -> tuple[ctypes.CDLL, object] | None:
    """libssl as CPython's _ssl sees it, and the accept-all callback (kept alive for good)."""
    if sys.implementation.name != "cpython":
        return None
    path = getattr(sys.modules.get("_ssl"), "__file__", None)
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)  # dlsym on it also searches the libssl it was linked with
        lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VerifyCallback]
        lib.SSL_CTX_set_verify.restype = None
        lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
    except (OSError, AttributeError) as e:
        log.debug("libssl functions not reachable through %s: %s", path, e)
        return None
    return lib, _VerifyCallback(_accept)


def _ssl_ctx(ctx: ssl.SSLContext, lib: ctypes.CDLL) -> int | None:
    """The context's ``SSL_CTX *``, or None when the guess at CPython's layout does not hold.

    CPython's PySSLContext holds the pointer right after the object header (3.6 to 3.13). The
    guess is checked by changing ``verify_mode`` through Python and reading it back from C.
    """
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ptr:
        return None
    saved, ok = ctx.verify_mode, True
    for mode, native in (
        (ssl.CERT_OPTIONAL, _VERIFY_PEER),
        (ssl.CERT_REQUIRED, _VERIFY_PEER | _VERIFY_FAIL_IF_NO_PEER_CERT),
    ):
        ctx.verify_mode = mode
        ok = ok and lib.SSL_CTX_get_verify_mode(ptr) == native
    ctx.verify_mode = saved
    return ptr if ok else None


def accept_any_peer_certificate(ctx: ssl.SSLContext) -> bool:
    """Make ``ctx`` accept any certificate the peer sends, keeping its ``verify_mode``.

    Python's ssl keeps an installed callback when ``verify_mode`` is set later.
    """
    native = _native()
    ptr = _ssl_ctx(ctx, native[0]) if native is not None else None
    if native is None or ptr is None:
        return False
    lib, callback = native
    mode = ctx.verify_mode
    lib.SSL_CTX_set_verify(ptr, _VERIFY_PEER | _VERIFY_FAIL_IF_NO_PEER_CERT, callback)
    ctx.verify_mode = mode  # back to what was asked, through Python so its view agrees
    return True


def set_groups(ctx: ssl.SSLContext, groups: str) -> bool:
    """Set the key-exchange groups in order, e.g. ``"X25519:P-256"`` (TLS 1.2 and 1.3)."""
    native = _native()
    ptr = _ssl_ctx(ctx, native[0]) if native is not None else None
    if native is None or ptr is None:
        return False
    return native[0].SSL_CTX_ctrl(ptr, _CTRL_SET_GROUPS_LIST, 0, groups.encode()) == 1
