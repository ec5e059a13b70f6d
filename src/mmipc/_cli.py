"""``python -m mmipc``: list, inspect, remove and garbage-collect regions; run the demo.

Commands (each takes ``--json`` for machine-readable output)::

    python -m mmipc ls                 regions and semaphores on this machine
    python -m mmipc inspect NAME|PATH  header fields, positions, participants, lag
    python -m mmipc rm NAME|PATH       remove a region's name or file and its semaphores
    python -m mmipc gc [--dry-run] [GLOB...]  remove objects whose every participant is dead
    python -m mmipc demo               producer/consumer throughput vs multiprocessing.Queue

Regions are found as named segments (``/dev/shm/mmipc-*``), as anonymous memfds held open by
live processes (``/proc/*/fd``), and as the semaphores ``/dev/shm/sem.mmipc-<nonce>-*``.
File-backed regions live anywhere: give their path to ``inspect`` and ``rm``.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from . import _layout as L
from ._errors import IncompatibleRegion, MmipcError, RegionNotFound
from ._liveness import Participants
from ._region import SEGMENT_PREFIX, SHM_DIR, Region, named_path
from ._semaphore import PREFIX as SEM_PREFIX
from ._semaphore import unlink_semaphore

__all__ = ["main"]

_SEM_RE = re.compile(r"^sem\." + re.escape(SEM_PREFIX) + r"([0-9a-f]{16})-(\w+)$")
_MEMFD_RE = re.compile(r"^/memfd:" + re.escape(SEGMENT_PREFIX) + r"([0-9a-f]{16})")


def _peek_kind(path: str) -> int:
    try:
        with open(path, "rb") as f:
            head = f.read(L.HEADER.size)
    except FileNotFoundError:
        raise RegionNotFound(f"{path!r} does not exist") from None
    if len(head) < L.HEADER.size or head[:8] != L.MAGIC:
        raise IncompatibleRegion(f"{path!r} is not an mmipc region")
    return int(L.HEADER.unpack(head)[2])


@contextlib.contextmanager
def _open_region(target: str) -> Iterator[Region]:
    """Map a region for inspection (no participant slot is claimed)."""
    if os.sep in target or os.path.exists(target):
        path = target
    else:
        path = named_path(target)
    region = Region.attach(_peek_kind(path), path=path, timeout=0.5)
    if path.startswith(SHM_DIR + os.sep + SEGMENT_PREFIX):
        region.backing, region.name, region.path = (
            "named",
            path[len(SHM_DIR) + 1 + len(SEGMENT_PREFIX) :],
            None,
        )
    try:
        yield region
    finally:
        region.close()


def _semaphores() -> dict[str, list[str]]:
    """Semaphore names in /dev/shm grouped by region nonce."""
    out: dict[str, list[str]] = {}
    try:
        entries = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return out
    for entry in sorted(entries):
        m = _SEM_RE.match(entry)
        if m:
            out.setdefault(m.group(1), []).append("/" + entry[len("sem.") :])
    return out


def _mapped_semaphore_nonces() -> set[str]:
    """Nonces of mmipc semaphores that some live process has open (mapped)."""
    found: set[str] = set()
    pattern = re.compile(r"/dev/shm/sem\." + re.escape(SEM_PREFIX) + r"([0-9a-f]{16})-")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    m = pattern.search(line)
                    if m:
                        found.add(m.group(1))
        except OSError:
            continue
    return found


def _anonymous_regions() -> dict[str, str]:
    """nonce -> a /proc/<pid>/fd/<n> path for every anonymous region a live process holds."""
    found: dict[str, str] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            m = _MEMFD_RE.match(link)
            if m and m.group(1) not in found:
                found[m.group(1)] = f"{fd_dir}/{fd}"
    return found


def _describe(region: Region, detail: bool) -> dict[str, Any]:
    hdr = region.header()
    participants = Participants(region).table()
    info: dict[str, Any] = {
        "name": region.display_name,
        "backing": region.backing,
        "kind": hdr["kind"],
        "state": hdr["state"],
        "size": hdr["total_size"],
        "capacity": hdr["data_size"],
        "creator_pid": hdr["creator_pid"],
        "nonce": hdr["nonce"],
        "participants": len(participants),
        "alive": sum(p.alive for p in participants),
    }
    if hdr["kind"] == "ring":
        assert region.words is not None
        w = region.words
        info.update(
            tail=w[L.W_TAIL],
            head=w[L.W_HEAD],
            lag_bytes=L.bytes_after(w, int(w[L.W_HEAD])),
            records_written=w[L.W_RECORDS_WRITTEN],
            records_read=w[L.W_RECORDS_READ],
            end_of_stream=bool(w[L.W_END_OF_STREAM]),
        )
        _describe_ring_mode(info, hdr["flags"], w, participants, detail)
        if detail:
            info.update(
                multi_writer=bool(hdr["flags"] & L.RING_MULTI_WRITER),
                max_record=hdr["max_record"],
                bytes_written=w[L.W_BYTES_WRITTEN],
                bytes_read=w[L.W_BYTES_READ],
                producer_waits=w[L.W_PRODUCER_WAITS],
                consumer_waits=w[L.W_CONSUMER_WAITS],
                pinned_records=w[L.W_PINNED],
                recoveries=w[L.W_RECOVERIES],
                lock_owner=w[L.W_LOCK_OWNER],
            )
    if detail:
        info["header"] = hdr
        info["participant_table"] = [
            {
                "slot": p.slot,
                "pid": p.pid,
                "alive": p.alive,
                "attached_ns": p.attached_ns,
                "roles": [n for bit, n in L.ROLE_NAMES.items() if p.roles & bit],
            }
            for p in participants
        ]
        info["semaphores"] = _semaphores().get(hdr["nonce"], [])
    return info


def _describe_ring_mode(
    info: dict[str, Any], flags: int, w: memoryview, participants: list[Any], detail: bool
) -> None:
    """Broadcast: the subscribers' cursors and states; queue: the claim position, redeliveries."""
    if flags & L.RING_BROADCAST:
        info["mode"] = "broadcast"
        untether_ms = flags >> L.RING_UNTETHER_SHIFT
        info["untether_after"] = f"{untether_ms / 1000} s" if untether_ms else "never (back-pressure)"
        info["lapped_total"] = w[L.W_B_LAPPED_TOTAL]
        subscribers = []
        for p in participants:
            if not p.roles & L.ROLE_SUBSCRIBER:
                continue
            cursor = w[L.slot_word(p.slot, L.S_CURSOR)]
            subscribers.append(
                {
                    "slot": p.slot,
                    "pid": p.pid,
                    "alive": p.alive,
                    "state": L.SUB_STATE_NAMES.get(w[L.slot_word(p.slot, L.S_SUB_STATE)] & 0xFF, "?"),
                    "cursor": cursor,
                    "lag_bytes": L.bytes_after(w, cursor),
                    "records_read": w[L.slot_word(p.slot, L.S_RECORDS_READ)],
                    "views": w[L.slot_word(p.slot, L.S_VIEWS)],
                }
            )
        info["subscribers"] = subscribers
    elif flags & L.RING_QUEUE:
        info["mode"] = "queue"
        info["claim"] = w[L.W_Q_CLAIM]
        info["redeliver_pending"] = w[L.W_Q_REDELIVER_PENDING]
        info["redelivered"] = w[L.W_Q_REDELIVERED]
        info["consumers_recovered"] = w[L.W_Q_CONSUMERS_RECOVERED]
    else:
        info["mode"] = "single"


def _list() -> dict[str, Any]:
    regions = []
    seen: set[str] = set()
    try:
        entries = sorted(os.listdir(SHM_DIR))
    except FileNotFoundError:
        entries = []
    for entry in entries:
        if not entry.startswith(SEGMENT_PREFIX):
            continue
        try:
            with _open_region(os.path.join(SHM_DIR, entry)) as region:
                info = _describe(region, detail=False)
        except (MmipcError, OSError) as exc:
            regions.append({"name": entry[len(SEGMENT_PREFIX) :], "backing": "named", "error": str(exc)})
            continue
        seen.add(info["nonce"])
        regions.append(info)
    for nonce, fd_path in sorted(_anonymous_regions().items()):
        if nonce in seen:
            continue
        try:
            with _open_region(fd_path) as region:
                region.backing = "anonymous"
                info = _describe(region, detail=False)
                info["name"] = f"anon:{nonce}"
        except (MmipcError, OSError):
            continue
        seen.add(nonce)
        regions.append(info)
    semaphores = _semaphores()
    mapped = _mapped_semaphore_nonces()
    orphans = {nonce: names for nonce, names in semaphores.items() if nonce not in seen}
    return {
        "regions": regions,
        "semaphores": [
            {"nonce": nonce, "names": names, "in_use": nonce in mapped}
            for nonce, names in sorted(orphans.items())
        ],
    }


def _remove(target: str) -> dict[str, Any]:
    with _open_region(target) as region:
        nonce = region.nonce
        region.mark_closed_state()
        removed_name = region.unlink_name()
    sems = [name for name in _semaphores().get(f"{nonce:016x}", []) if unlink_semaphore(name)]
    return {"target": target, "removed_region": removed_name, "removed_semaphores": sems}


def _gc(dry_run: bool, patterns: Sequence[str] = ()) -> dict[str, Any]:
    """Remove named regions with no live participant and semaphores nobody has open.

    With ``patterns`` (shell globs), only named regions whose name matches, and their
    semaphores, are considered.
    """
    removed: list[dict[str, Any]] = []
    live_nonces: set[str] = set()
    removed_nonces: set[str] = set()
    for entry in sorted(os.listdir(SHM_DIR)) if os.path.isdir(SHM_DIR) else []:
        if not entry.startswith(SEGMENT_PREFIX):
            continue
        if patterns and not any(fnmatch.fnmatchcase(entry[len(SEGMENT_PREFIX) :], p) for p in patterns):
            continue
        path = os.path.join(SHM_DIR, entry)
        try:
            with _open_region(path) as region:
                alive = any(p.alive for p in Participants(region).table())
                nonce = f"{region.nonce:016x}"
                if alive:
                    live_nonces.add(nonce)
                    continue
                if not dry_run:
                    region.mark_closed_state()
                    region.unlink_name()
                removed.append({"region": entry[len(SEGMENT_PREFIX) :], "nonce": nonce})
                removed_nonces.add(nonce)
        except (MmipcError, OSError):
            continue
    live_nonces |= set(_anonymous_regions())
    live_nonces |= _mapped_semaphore_nonces()
    for nonce, names in _semaphores().items():
        if nonce in live_nonces or (patterns and nonce not in removed_nonces):
            continue
        for name in names:
            if dry_run or unlink_semaphore(name):
                removed.append({"semaphore": name, "nonce": nonce})
    return {"dry_run": dry_run, "removed": removed}


def _fmt_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError


def _print_list(result: dict[str, Any]) -> None:
    regions = result["regions"]
    if not regions and not result["semaphores"]:
        print("no mmipc regions or semaphores")
        return
    if regions:
        print(f"{'NAME':32} {'KIND':5} {'BACKING':9} {'SIZE':>10} {'CREATOR':>8} {'ALIVE':>5} {'LAG':>10}")
        for r in regions:
            if "error" in r:
                print(f"{r['name']:32} {'?':5} {r['backing']:9} error: {r['error']}")
                continue
            lag = _fmt_size(r["lag_bytes"]) if "lag_bytes" in r else "-"
            print(
                f"{r['name'][:32]:32} {r['kind']:5} {r['backing']:9} {_fmt_size(r['size']):>10} "
                f"{r['creator_pid']:>8} {r['alive']:>5} {lag:>10}"
            )
    for s in result["semaphores"]:
        state = "in use" if s["in_use"] else "orphan (gc removes it)"
        print(
            f"semaphores of region {s['nonce']} (no region found: file-backed or gone), {state}: {' '.join(s['names'])}"
        )


def _print_inspect(info: dict[str, Any]) -> None:
    for key, value in info.items():
        if key in ("header", "participant_table", "semaphores", "subscribers"):
            continue
        print(f"{key:18} {value}")
    if "subscribers" in info:
        print("subscribers:")
        if not info["subscribers"]:
            print("  (none)")
        for sub in info["subscribers"]:
            print(
                f"  slot {sub['slot']:3} pid {sub['pid']:8} {'alive' if sub['alive'] else 'DEAD':5} "
                f"{sub['state']:11} cursor {sub['cursor']} lag {_fmt_size(sub['lag_bytes'])} "
                f"records {sub['records_read']} views {sub['views']}"
            )
    print("header:")
    for key, value in info["header"].items():
        print(f"  {key:20} {value}")
    print("participants:")
    if not info["participant_table"]:
        print("  (none)")
    for p in info["participant_table"]:
        roles = ",".join(p["roles"]) or "attached"
        print(f"  slot {p['slot']:3} pid {p['pid']:8} {'alive' if p['alive'] else 'DEAD':5} {roles}")
    print("semaphores:", " ".join(info["semaphores"]) or "(none)")


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(total=args.total, size=args.size, json_output=args.json)


def _parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]i?B?|B)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 1GiB, 64MiB, 4096)")
    unit = (m.group(2) or "B").upper().rstrip("B").rstrip("I")
    return int(m.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[unit]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmipc", description="Inspect and manage mmipc regions.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_ls = sub.add_parser("ls", help="list regions and semaphores")
    p_inspect = sub.add_parser("inspect", help="show a region's header, positions and participants")
    p_inspect.add_argument("target", help="region name or file path")
    p_rm = sub.add_parser("rm", help="remove a region's name or file and its semaphores")
    p_rm.add_argument("target", nargs="+", help="region name or file path")
    p_gc = sub.add_parser("gc", help="remove regions and semaphores whose every participant is dead")
    p_gc.add_argument("--dry-run", action="store_true", help="only show what would be removed")
    p_gc.add_argument(
        "pattern", nargs="*", help="only named regions matching these globs (and their semaphores)"
    )
    p_demo = sub.add_parser("demo", help="producer/consumer throughput vs multiprocessing.Queue")
    p_demo.add_argument("--total", type=_parse_size, default=1 << 30, help="bytes to exchange (default 1GiB)")
    p_demo.add_argument("--size", type=_parse_size, default=1 << 20, help="payload size (default 1MiB)")
    for p in (p_ls, p_inspect, p_rm, p_gc, p_demo):
        p.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "ls":
            result: Any = _list()
            printer: Any = _print_list
        elif args.command == "inspect":
            with _open_region(args.target) as region:
                result = _describe(region, detail=True)
            printer = _print_inspect
        elif args.command == "rm":
            result = [_remove(t) for t in args.target]

            def printer(res: list[dict[str, Any]]) -> None:
                for r in res:
                    print(
                        f"removed {r['target']}"
                        + (
                            f" and {len(r['removed_semaphores'])} semaphores"
                            if r["removed_semaphores"]
                            else ""
                        )
                    )
        else:
            result = _gc(args.dry_run, args.pattern)

            def printer(res: dict[str, Any]) -> None:
                verb = "would remove" if res["dry_run"] else "removed"
                if not res["removed"]:
                    print("nothing to remove")
                for r in res["removed"]:
                    print(
                        f"{verb} {'region ' + r['region'] if 'region' in r else 'semaphore ' + r['semaphore']}"
                    )
    except (MmipcError, ValueError) as exc:
        print(f"mmipc: {exc}", file=sys.stderr)
        return 1
    try:
        if args.json:
            print(json.dumps(result, indent=2, default=str))
        else:
            printer(result)
        sys.stdout.flush()
    except BrokenPipeError:  # `python -m mmipc ls | head`: the reader left, nothing is wrong
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 0
