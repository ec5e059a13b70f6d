"""Zero-copy views of a mapping whose lifetime can be observed.

A plain ``memoryview`` slice cannot tell when everything derived from it is gone: sub-slices
and numpy arrays share its managed buffer without registering as its exports, and numpy even
lets the original be released under it. So each view handed to a user is exported by a small
per-view ``ctypes`` array laid over the mapping: every memoryview, slice, cast and numpy array
made from the view keeps that array alive (measured: ``np.frombuffer``, ``np.asarray``,
``pickle.loads(buffers=...)``, ``view[a:b]``, ``view.cast(...)``), and a weak reference to it
says exactly when the memory may be reused (~1.2 us per view on the reference machine).
"""

from __future__ import annotations

import ctypes
import mmap
import weakref

__all__ = ["tracked_view"]


def tracked_view(
    mm: mmap.mmap, offset: int, length: int, readonly: bool = True
) -> tuple[memoryview, weakref.ref[ctypes.Array[ctypes.c_ubyte]] | None]:
    """A view of ``mm[offset:offset + length]`` and a weak reference that dies with its last user.

    The reference is ``None`` for an empty view (nothing to protect); each empty view is a new
    object, so releasing one never affects another.
    """
    if length == 0:
        return memoryview(b""), None
    exporter = (ctypes.c_ubyte * length).from_buffer(mm, offset)
    view = memoryview(exporter).cast("B")
    if readonly:
        view = view.toreadonly()
    return view, weakref.ref(exporter)
