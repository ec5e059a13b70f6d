"""Shared mappings: create, attach, validate, lock, pickle, close and unlink a region.

A region is one file mapped ``MAP_SHARED`` in every process that uses it. Three backings:

* **anonymous** (default): ``os.memfd_create``. Fork children inherit it; ``spawn`` and
  ``forkserver`` children receive the file descriptor when a handle is pickled into them
  (``multiprocessing.reduction.DupFd``). It disappears when the last descriptor closes.
* **named**: a POSIX shared-memory object, ``/dev/shm/mmipc-<name>``, attachable by name from
  any process of the same user until it is unlinked.
* **file**: any path; the contents persist across restarts.

Space is reserved at creation with ``posix_fallocate`` so that a full ``/dev/shm`` is a clear
:class:`NoSpaceError` at creation instead of a SIGBUS later. Objects are created mode 0600.

This module knows bytes, offsets and OS objects; it knows nothing of records or keys. Liveness
locks are OFD locks (``F_OFD_SETLK``) on bytes far beyond the end of the file: the kernel drops
them when the process dies, and a fork child re-opens its descriptor (a new open file
description) so that it never shares its parent's locks (DESIGN.md 7).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import re
import secrets
import stat
import struct
import threading
import time
import weakref
import zlib
from collections.abc import Callable
from typing import Any

from . import _layout as L
from ._errors import (
    ClosedError,
    CorruptionError,
    IncompatibleRegion,
    MmipcError,
    NoSpaceError,
    RegionExists,
    RegionNotFound,
)

__all__ = ["SHM_DIR", "Region", "header_crc", "named_path"]

SHM_DIR = "/dev/shm"
SEGMENT_PREFIX = "mmipc-"
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")

F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
F_OFD_SETLKW = getattr(fcntl, "F_OFD_SETLKW", 38)
# struct flock on Linux (x86-64 and aarch64): short type, short whence, off_t start, off_t len,
# pid_t pid, padded to 32 bytes. OFD locks require l_pid == 0.
_FLOCK = struct.Struct("@hhqqi4x")

# Regions alive in this process, re-opened in fork children (see _after_fork_in_child).
_live_regions: weakref.WeakSet[Region] = weakref.WeakSet()


def named_path(name: str) -> str:
    """The ``/dev/shm`` path of a named region (validates the name)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"invalid region name {name!r}: use 1-200 characters from A-Z a-z 0-9 _ . -"
            " (not starting with '.' or '-')"
        )
    return os.path.join(SHM_DIR, SEGMENT_PREFIX + name)


def header_crc(buf: Any) -> int:
    """The header checksum over the static fields (``CRC_RANGES``)."""
    crc = 0
    for start, end in L.CRC_RANGES:
        crc = zlib.crc32(buf[start:end], crc)
    return crc


def _fmt_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError


class Region:
    """One mapping of a region in this process.

    Attributes: ``kind``, ``backing`` ('anonymous', 'named', 'file'), ``name``, ``path``, ``fd``,
    ``mm`` (the ``mmap``), ``words`` (``memoryview.cast('Q')`` of the whole mapping), ``size``,
    ``nonce``, ``display_name``.
    """

    def __init__(
        self,
        kind: int,
        backing: str,
        name: str | None,
        path: str | None,
        fd: int,
        readonly: bool = False,
    ) -> None:
        self.kind = kind
        self.backing = backing
        self.name = name
        self.path = path
        self.fd = fd
        self.readonly = readonly
        self.size = 0
        self.nonce = 0
        self.mm: mmap.mmap | None = None
        self.words: memoryview | None = None
        self.buf: memoryview | None = None
        self.fork_callbacks: list[Callable[[], None]] = []
        self._closed = False
        self._lock = threading.Lock()

    # -- creation and attachment ----------------------------------------------------------

    @classmethod
    def create(
        cls,
        kind: int,
        data_size: int,
        *,
        name: str | None = None,
        path: str | os.PathLike[str] | None = None,
        mode: int = 0o600,
        max_participants: int = L.DEFAULT_MAX_PARTICIPANTS,
        flags: int = 0,
        max_record: int = 0,
        hugepages: bool = False,
    ) -> Region:
        """Create a new region with a READY header and return its mapping.

        Raises :class:`RegionExists` if the name or path is taken, :class:`NoSpaceError` if the
        backing store cannot hold ``data_size`` bytes.
        """
        if name is not None and path is not None:
            raise ValueError("give a name or a path, not both")
        if not 1 <= max_participants <= 4096:
            raise ValueError(f"max_participants must be in 1..4096, got {max_participants}")
        nonce = secrets.randbits(64) or 1
        data_offset = L.data_offset_for(max_participants)
        total = data_offset + data_size
        if name is not None:
            backing, fspath = "named", named_path(name)
        elif path is not None:
            backing, fspath = "file", os.fspath(path)
        else:
            backing, fspath = "anonymous", None
        if fspath is None:
            fd = os.memfd_create(f"{SEGMENT_PREFIX}{nonce:016x}", os.MFD_CLOEXEC)
        else:
            try:
                fd = os.open(fspath, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            except FileExistsError:
                what = f"named region {name!r}" if name is not None else f"file {fspath!r}"
                raise RegionExists(f"{what} already exists ({fspath})") from None
            except FileNotFoundError:
                raise RegionNotFound(f"cannot create {fspath!r}: directory missing") from None
        region = cls(kind, backing, name, fspath if backing == "file" else None, fd)
        try:
            if backing != "file":
                os.fchmod(fd, mode)
            os.ftruncate(fd, total)
            try:
                os.posix_fallocate(fd, 0, total)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    where = fspath or "memfd (/dev/shm, tmpfs)"
                    raise NoSpaceError(
                        f"cannot reserve {total} bytes ({_fmt_size(total)}) for "
                        f"{name or fspath or 'an anonymous region'} in {where}: no space left"
                    ) from None
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
            region._map(total)
            if hugepages:
                region.advise_hugepages()
            display = name or (os.path.basename(fspath) if fspath else f"anon:{nonce:016x}")
            assert region.buf is not None and region.words is not None
            L.HEADER.pack_into(
                region.buf,
                0,
                L.MAGIC,
                L.LAYOUT_VERSION,
                kind,
                L.STATE_INIT,
                nonce,
                total,
                data_offset,
                data_size,
                os.getpid(),
                time.time_ns(),
                max_participants,
                L.SLOT_SIZE,
                flags,
                max_record,
                display.encode()[: L.NAME_SIZE],
                0,
                L.RECORD_ALIGN,
                L.RECORD_HEADER_SIZE,
            )
            L.CRC.pack_into(region.buf, L.CRC_OFFSET, header_crc(region.buf))
            region.nonce = nonce
            region.words[L.W_STATE] = L.STATE_READY  # published last (single store)
        except BaseException:
            region._discard_after_failed_create(fspath)
            raise
        _live_regions.add(region)
        return region

    def _discard_after_failed_create(self, fspath: str | None) -> None:
        if fspath is not None:
            try:
                os.unlink(fspath)
            except OSError:
                pass
        self._unmap()
        os.close(self.fd)
        self._closed = True

    @classmethod
    def attach(
        cls,
        kind: int,
        *,
        name: str | None = None,
        path: str | os.PathLike[str] | None = None,
        fd: int | None = None,
        timeout: float = 2.0,
        readonly: bool = False,
    ) -> Region:
        """Map an existing region after validating its header.

        A region still initializing is waited for up to ``timeout`` seconds. Raises
        :class:`RegionNotFound`, :class:`IncompatibleRegion` (foreign file, other layout version,
        other kind, truncated, still initializing, unlinked) or :class:`CorruptionError`.
        """
        if sum(x is not None for x in (name, path, fd)) != 1:
            raise ValueError("attach needs exactly one of name, path or fd")
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
        if fd is not None:
            # A descriptor received from another process shares that process's open file
            # description, hence its OFD locks: open our own.
            new_fd = os.open(f"/proc/self/fd/{fd}", flags)
            os.close(fd)
            region = cls(kind, "anonymous", None, None, new_fd, readonly)
            what = "anonymous region"
        else:
            if name is not None:
                fspath, backing, what = named_path(name), "named", f"named region {name!r}"
            else:
                assert path is not None
                fspath, backing, what = os.fspath(path), "file", f"file {os.fspath(path)!r}"
            try:
                new_fd = os.open(fspath, flags)
            except FileNotFoundError:
                raise RegionNotFound(f"{what} does not exist ({fspath})") from None
            except IsADirectoryError:
                raise IncompatibleRegion(f"{what} is a directory") from None
            region = cls(kind, backing, name, fspath if backing == "file" else None, new_fd, readonly)
        try:
            region._validate(what, timeout)
        except BaseException:
            region._unmap()
            os.close(region.fd)
            region._closed = True
            raise
        _live_regions.add(region)
        return region

    def _validate(self, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            problem = self._check_header(what)
            if problem is None:
                return
            if time.monotonic() >= deadline:
                raise IncompatibleRegion(f"{what} is still initializing after {timeout} s ({problem})")
            self._unmap()
            time.sleep(0.002)

    def _check_header(self, what: str) -> str | None:
        """Map and validate; return a reason to wait (initializing) or None; raise if bad."""
        st = os.fstat(self.fd)
        if not stat.S_ISREG(st.st_mode):
            raise IncompatibleRegion(f"{what} is not a regular file")
        size = st.st_size
        if size == 0:
            return "empty file"
        if size < L.HEADER_SIZE:
            raise IncompatibleRegion(
                f"{what} is not an mmipc region: {size} bytes, smaller than the {L.HEADER_SIZE}-byte header"
            )
        self._map(size)
        assert self.buf is not None and self.words is not None
        head = bytes(self.buf[: L.HEADER.size])
        (
            magic,
            version,
            kind,
            state,
            nonce,
            total,
            data_offset,
            data_size,
            _pid,
            _ns,
            max_participants,
            slot_size,
            _flags,
            _max_record,
            _name,
            crc,
            _align,
            _rh,
        ) = L.HEADER.unpack(head)
        if magic != L.MAGIC:
            if magic == bytes(8) and state == L.STATE_INIT:
                return "header not written yet"
            raise IncompatibleRegion(f"{what} is not an mmipc region (magic {magic!r})")
        if version != L.LAYOUT_VERSION:
            raise IncompatibleRegion(
                f"{what} has layout version {version}; this mmipc reads version {L.LAYOUT_VERSION}"
            )
        state = self.words[L.W_STATE]
        if state == L.STATE_INIT:
            return "state INIT"
        if crc != header_crc(self.buf):
            raise CorruptionError(f"{what}: header checksum mismatch (the header was overwritten)")
        if kind != self.kind:
            raise IncompatibleRegion(
                f"{what} is a {L.KIND_NAMES.get(kind, f'kind-{kind}')} region, not a "
                f"{L.KIND_NAMES.get(self.kind, self.kind)}"
            )
        if state == L.STATE_CLOSED:
            raise IncompatibleRegion(f"{what} was unlinked")
        if state == L.STATE_POISONED:
            raise CorruptionError(f"{what} is marked poisoned")
        if state != L.STATE_READY:
            raise CorruptionError(f"{what} has unknown state {state}")
        if total > size:
            raise IncompatibleRegion(
                f"{what} is truncated: the file has {size} bytes, its header says {total}"
            )
        if (
            slot_size != L.SLOT_SIZE
            or data_offset != L.data_offset_for(max_participants)
            or data_offset + data_size != total
        ):
            raise CorruptionError(f"{what}: inconsistent geometry in header")
        self.nonce = nonce
        if _flags & L.REGION_HUGEPAGES:
            self.advise_hugepages()
        return None

    def advise_hugepages(self) -> None:
        """Ask for transparent huge pages for this mapping, where the platform offers them.

        ``madvise`` applies per mapping, so every process that maps a region created with
        ``hugepages=True`` calls this (the flag is in the header). Whether the kernel honours it
        for shared memory depends on ``/sys/kernel/mm/transparent_hugepage/shmem_enabled``.
        """
        if self.mm is not None and hasattr(mmap, "MADV_HUGEPAGE"):
            try:
                self.mm.madvise(mmap.MADV_HUGEPAGE)
            except OSError:
                pass  # not supported by this kernel or filesystem: a hint, not a requirement

    def _map(self, size: int) -> None:
        prot = mmap.PROT_READ if self.readonly else mmap.PROT_READ | mmap.PROT_WRITE
        self.mm = mmap.mmap(self.fd, size, mmap.MAP_SHARED, prot)
        self.size = size
        self.buf = memoryview(self.mm)
        self.words = self.buf[: size - size % 8].cast("Q")

    def _unmap(self) -> None:
        """Drop this handle's mapping; deferred to the GC while user views still export it."""
        if self.words is not None:
            self.words.release()
            self.words = None
        if self.buf is not None:
            self.buf.release()
            self.buf = None
        if self.mm is not None:
            try:
                self.mm.close()
            except BufferError:
                pass  # views are still alive: the mapping goes when the last one is collected
            self.mm = None

    # -- header fields --------------------------------------------------------------------

    def header(self) -> dict[str, Any]:
        """The static header fields as a dict (for ``inspect`` and ``repr``)."""
        buf = self._require_open()
        (
            magic,
            version,
            kind,
            _state,
            nonce,
            total,
            data_offset,
            data_size,
            pid,
            created_ns,
            max_participants,
            slot_size,
            flags,
            max_record,
            name,
            _crc,
            align,
            rh,
        ) = L.HEADER.unpack_from(buf, 0)
        assert self.words is not None
        return {
            "magic": magic.decode("latin-1"),
            "layout_version": version,
            "kind": L.KIND_NAMES.get(kind, str(kind)),
            "state": L.STATE_NAMES.get(self.words[L.W_STATE], str(self.words[L.W_STATE])),
            "nonce": f"{nonce:016x}",
            "total_size": total,
            "data_offset": data_offset,
            "data_size": data_size,
            "creator_pid": pid,
            "created_ns": created_ns,
            "max_participants": max_participants,
            "slot_size": slot_size,
            "flags": flags,
            "max_record": max_record,
            "name": name.rstrip(b"\0").decode(errors="replace"),
            "record_align": align,
            "record_header_size": rh,
        }

    @property
    def display_name(self) -> str:
        if self.name is not None:
            return self.name
        if self.path is not None:
            return self.path
        return f"anon:{self.nonce:016x}"

    def _require_open(self) -> memoryview:
        if self.buf is None:
            raise ClosedError(f"region {self.display_name!r} is closed")
        return self.buf

    # -- OFD locks ------------------------------------------------------------------------

    def lock(self, byte: int, *, wait: bool = False) -> bool:
        """Take an exclusive OFD lock on ``byte``; return False if another holder has it."""
        arg = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0)
        try:
            fcntl.fcntl(self.fd, F_OFD_SETLKW if wait else F_OFD_SETLK, arg)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def unlock(self, byte: int) -> None:
        """Drop this handle's OFD lock on ``byte`` (no-op if not held)."""
        fcntl.fcntl(self.fd, F_OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, byte, 1, 0))

    def locked_elsewhere(self, byte: int) -> bool:
        """Whether another open file description (a live process) holds a lock on ``byte``.

        A lock held by this handle itself does not count (``F_OFD_GETLK`` semantics).
        """
        arg = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0)
        res = fcntl.fcntl(self.fd, F_OFD_GETLK, arg)
        return bool(_FLOCK.unpack(res)[0] != fcntl.F_UNLCK)

    def lock_with_timeout(self, byte: int, timeout: float, what: str) -> None:
        """Take the OFD lock on ``byte``, polling for at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        delay = 0.0001
        while not self.lock(byte):
            if time.monotonic() >= deadline:
                raise MmipcError(f"{what}: lock byte {byte:#x} of {self.display_name!r} busy for {timeout} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    # -- fork, pickling, close, unlink ----------------------------------------------------

    def _after_fork_in_child(self) -> None:
        # The child's descriptor shares the parent's open file description and so its OFD
        # locks: a dead parent would look alive. Re-open to get a description of our own.
        if self._closed:
            return
        try:
            new_fd = os.open(
                f"/proc/self/fd/{self.fd}", (os.O_RDONLY if self.readonly else os.O_RDWR) | os.O_CLOEXEC
            )
            os.dup2(new_fd, self.fd, inheritable=False)
            os.close(new_fd)
        except OSError:
            pass
        self._lock = threading.Lock()
        for callback in list(self.fork_callbacks):
            callback()

    def descriptor(self) -> tuple[str, Any]:
        """A picklable description that re-attaches in another process."""
        if self._closed:
            raise ClosedError(f"region {self.display_name!r} is closed")
        if self.backing == "named":
            return ("named", self.name)
        if self.backing == "file":
            return ("file", self.path)
        from multiprocessing.reduction import DupFd

        return ("anonymous", DupFd(self.fd))

    @classmethod
    def from_descriptor(cls, kind: int, descriptor: tuple[str, Any]) -> Region:
        backing, value = descriptor
        if backing == "named":
            return cls.attach(kind, name=value)
        if backing == "file":
            return cls.attach(kind, path=value)
        return cls.attach(kind, fd=value.detach())

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Unmap and close the descriptor (dropping this handle's OFD locks). Idempotent."""
        if self._closed:
            return
        self._closed = True
        _live_regions.discard(self)
        self._unmap()
        try:
            os.close(self.fd)
        except OSError:
            pass

    def mark_closed_state(self) -> None:
        """Store STATE_CLOSED so that no one attaches to a region being unlinked."""
        if self.words is not None and not self.readonly:
            self.words[L.W_STATE] = L.STATE_CLOSED

    def unlink_name(self) -> bool:
        """Remove the region's name or file (anonymous regions have none). False if gone."""
        target = named_path(self.name) if self.backing == "named" and self.name else self.path
        if target is None:
            return False
        try:
            os.unlink(target)
        except FileNotFoundError:
            return False
        return True

    def flush(self) -> None:
        """``msync`` the mapping (makes a file-backed region durable)."""
        if self.mm is None:
            raise ClosedError(f"region {self.display_name!r} is closed")
        self.mm.flush()


def _after_fork_in_child() -> None:
    for region in list(_live_regions):
        region._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
