"""Serializers for channels: pickle protocol 5 with out-of-band buffers, raw bytes, any pair.

A serializer turns an object into a *stream* (bytes that go into the ring record) and hands each
large buffer to a ``buffer_callback`` that decides whether it travels out-of-band (the channel
then copies it into its shared heap, or references it there when it already lives in it), and
rebuilds the object from the stream and the received buffers.

Security: unpickling runs code chosen by whoever wrote the data. Channel regions are created
with mode 0600, so only processes of the same user can attach; when the writer is not fully
trusted use :class:`RawSerializer` (bytes only) or a data-only pair such as msgspec or json
(:class:`PairSerializer`).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from typing import Any

from . import _layout as L
from ._errors import SerializationError

__all__ = [
    "DEFAULT_COPY_THRESHOLD",
    "PairSerializer",
    "PickleSerializer",
    "RawSerializer",
    "Serializer",
    "resolve_serializer",
]

# Buffers smaller than this are copied into the stream (in-band); larger ones go to the heap.
# Measured by ``python -m benchmarks channel_threshold`` (table in docs/channels.md): out-of-band
# costs a fixed ~7 us more per object (allocation, block states, a tracked view, a weak
# reference); in-band costs copies and, from 256-512 KiB, page faults on fresh allocations that
# make it 4-10x slower. 64 KiB is where out-of-band's other gains (zero-copy views, no ring
# space, held objects never stall the ring) are worth its fixed cost.
DEFAULT_COPY_THRESHOLD = 64 << 10

BufferCallback = Callable[[pickle.PickleBuffer], bool]


class Serializer:
    """Base class. Subclasses set ``serializer_id`` and implement :meth:`dumps` / :meth:`loads`.

    ``dumps(obj, buffer_callback)`` returns a bytes-like stream; for every buffer it wants to
    send out-of-band it calls ``buffer_callback(PickleBuffer)``, which returns True when the
    buffer must be written in-band instead. ``loads(stream, buffers)`` gets the out-of-band
    buffers back, in order, as read-only memoryviews (or owned copies with ``copy=True``).
    """

    serializer_id = L.SER_CUSTOM
    name = "custom"

    def dumps(self, obj: Any, buffer_callback: BufferCallback | None) -> Any:
        raise NotImplementedError

    def loads(self, stream: Any, buffers: Sequence[Any], copy: bool = False) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<mmipc serializer {self.name}>"


class PickleSerializer(Serializer):
    """Pickle protocol 5 (the default): any picklable object; large buffers out-of-band.

    numpy arrays, ``bytes``, ``bytearray`` and ``PickleBuffer`` objects larger than the channel's
    ``copy_threshold`` travel as heap blocks and come back as read-only views.
    """

    serializer_id = L.SER_PICKLE
    name = "pickle"

    def dumps(self, obj: Any, buffer_callback: BufferCallback | None) -> Any:
        if buffer_callback is not None and type(obj) in (bytes, bytearray):
            # pickle copies bytes and bytearray in-band; wrap large ones so they go out-of-band.
            if len(obj) and not buffer_callback(pickle.PickleBuffer(obj)):
                return pickle.dumps(_OutOfBand(type(obj) is bytes), protocol=5)
        if type(obj) is memoryview:
            obj = pickle.PickleBuffer(obj)  # memoryviews do not pickle; their bytes do
        try:
            return pickle.dumps(obj, protocol=5, buffer_callback=buffer_callback)
        except Exception as exc:
            raise SerializationError(f"cannot pickle {type(obj).__name__} object: {exc}") from exc

    def loads(self, stream: Any, buffers: Sequence[Any], copy: bool = False) -> Any:
        obj = pickle.loads(stream, buffers=buffers)
        if type(obj) is _OutOfBand:
            data = buffers[0]
            return obj.rebuild(data)
        return obj


class _OutOfBand:
    """Marker stream for a large bytes/bytearray sent as one out-of-band buffer."""

    __slots__ = ("is_bytes",)

    def __init__(self, is_bytes: bool) -> None:
        self.is_bytes = is_bytes

    def __reduce__(self) -> tuple[Any, ...]:
        return (_OutOfBand, (self.is_bytes,))

    def rebuild(self, data: Any) -> Any:
        # A read-only view stays a zero-copy view (documented); an owned copy becomes the type sent.
        if isinstance(data, memoryview) and data.readonly:
            return data
        return bytes(data) if self.is_bytes else bytearray(data)


class RawSerializer(Serializer):
    """Bytes-like objects only, no pickle: safe with peers that must not run code on receive.

    ``send`` accepts any bytes-like object; ``recv`` returns a read-only ``memoryview`` (of the
    heap for large payloads, zero-copy) and ``recv(copy=True)`` a ``bytearray``.
    """

    serializer_id = L.SER_RAW
    name = "raw"

    def dumps(self, obj: Any, buffer_callback: BufferCallback | None) -> Any:
        try:
            view = memoryview(obj)
        except TypeError:
            raise SerializationError(
                f"the raw serializer sends bytes-like objects only, not {type(obj).__name__}"
            ) from None
        if buffer_callback is not None and view.nbytes and view.c_contiguous:
            if not buffer_callback(pickle.PickleBuffer(view)):
                return b""
        return view.cast("B") if view.c_contiguous else view.tobytes()

    def loads(self, stream: Any, buffers: Sequence[Any], copy: bool = False) -> Any:
        if buffers:
            return buffers[0]
        if copy:
            return bytearray(stream)
        return memoryview(bytes(stream)).toreadonly()


class PairSerializer(Serializer):
    """Any ``dumps(obj) -> bytes`` / ``loads(bytes) -> obj`` pair (msgspec, json, marshal...).

    Everything travels in-band, in the ring record. Both callables must pickle (module-level
    functions do) so that the channel can be passed to child processes.
    """

    serializer_id = L.SER_CUSTOM

    def __init__(
        self, dumps: Callable[[Any], Any], loads: Callable[[Any], Any], name: str = "custom"
    ) -> None:
        self._dumps = dumps
        self._loads = loads
        self.name = name

    def dumps(self, obj: Any, buffer_callback: BufferCallback | None) -> Any:
        try:
            stream = self._dumps(obj)
        except Exception as exc:
            raise SerializationError(
                f"cannot serialize {type(obj).__name__} object with {self.name}: {exc}"
            ) from exc
        if isinstance(stream, str):
            return stream.encode()  # json.dumps and friends return text
        try:
            return memoryview(stream).cast("B")
        except TypeError:
            raise SerializationError(
                f"{self.name} dumps returned {type(stream).__name__}, not bytes or str"
            ) from None

    def loads(self, stream: Any, buffers: Sequence[Any], copy: bool = False) -> Any:
        return self._loads(bytes(stream))

    def __reduce__(self) -> tuple[Any, ...]:
        return (PairSerializer, (self._dumps, self._loads, self.name))


def resolve_serializer(serializer: Any) -> Serializer:
    """``None``/``"pickle"``, ``"raw"``, a :class:`Serializer`, or a ``(dumps, loads)`` pair."""
    if serializer is None or serializer == "pickle":
        return PickleSerializer()
    if serializer == "raw":
        return RawSerializer()
    if isinstance(serializer, Serializer):
        return serializer
    if isinstance(serializer, tuple) and len(serializer) == 2 and all(callable(f) for f in serializer):
        return PairSerializer(serializer[0], serializer[1])
    raise TypeError(
        f"serializer must be 'pickle', 'raw', a Serializer or a (dumps, loads) pair, not {serializer!r}"
    )
