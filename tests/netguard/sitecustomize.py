"""Refuse and record every non-loopback network connection in this Python process.

Active only when MI_TUTOR_NETGUARD_LOG names a file: each attempted connection (and each
DNS lookup of a non-local name) is appended to it as one line, then refused with OSError.
The offline test puts this folder on PYTHONPATH for the processes and kernels it starts.
"""
import os
import socket

_LOG = os.environ.get("MI_TUTOR_NETGUARD_LOG")
_LOCAL = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "", None}


def _is_local(host) -> bool:
    return host in _LOCAL or (isinstance(host, str) and (host.startswith("127.") or host.endswith(".localhost")))


def _record(what: str) -> None:
    with open(_LOG, "a") as f:
        f.write(f"{os.getpid()} {what}\n")


if _LOG:
    _connect = socket.socket.connect
    _connect_ex = socket.socket.connect_ex
    _getaddrinfo = socket.getaddrinfo

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            _record(f"connect {address!r}")
            raise OSError(101, f"network disabled by mi_tutor's offline test: {address!r}")
        return _connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            _record(f"connect_ex {address!r}")
            return 101
        return _connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_local(host):
            _record(f"getaddrinfo {host!r}")
            raise socket.gaierror(-3, f"DNS disabled by mi_tutor's offline test: {host!r}")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = getaddrinfo
