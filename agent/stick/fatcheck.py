"""The census: is a FAT filesystem sound enough to write to?  A small ``fsck.fat -n`` of our own.

Before anything is written (and before a device is provisioned for it) the whole tree is
walked once: every directory and every cluster chain, each cluster claimed by exactly one
owner.  A write then can only ever touch clusters that are free (no chain reaches them) or
that belong to the one file it replaces or wipes; nothing another file references is ever
zeroed or freed.  What the census finds:

* the FAT copies disagree (mtools reads the first, Linux the first, fsck.fat asks);
* a chain that leaves the volume, loops, runs into a free or bad cluster, or is shared
  with another file or directory (cross-linked);
* a file whose size does not match its chain, a directory that points back at the root;
* more entries than :data:`MAX_ENTRIES` (a stick we cannot vouch for in bounded time).

The dirty flag (boot sector, or FAT[1]'s clean-shutdown bit) is reported as a *warning*:
the filesystem was not cleanly unmounted, but when every structure above checks out there is
nothing a write could break, and the appliance's kernel reads such a stick all the same.

Costs: one read of each FAT copy and of every directory, and one step per used cluster.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.stick.fatfs import ATTR_DIR, ATTR_VOLUME, DirEntry, FatCorrupt, FatReader, runs
from agent.stick.fatgeo import Geometry

#: Entries (files and directories) a census walks before it gives up on the stick.
MAX_ENTRIES = 65536


@dataclass
class Room:
    """Space for a new file: free clusters and free slots in the root directory."""

    free_clusters: int = 0  # counted in the FAT
    recorded_free: int | None = None  # FAT32's FSInfo count, when plausible
    root_free_run: int = 0  # the longest run of free slots in the root directory
    root_growable: bool = False  # FAT32: the root is a chain that can take another cluster

    @property
    def usable_free(self) -> int:
        """Free clusters a writer may count on (mtools trusts FSInfo's count; the FAT has the truth)."""
        if self.recorded_free is None:
            return self.free_clusters
        return min(self.free_clusters, self.recorded_free)

    def shortfall(self, clusters: int, slots: int) -> str | None:
        """Why a file of ``clusters`` clusters, named with ``slots`` directory slots, cannot go into the root:
        ``"space"`` or ``"root"`` (full directory), or None when it can."""
        if self.root_free_run >= slots:
            return None if self.usable_free >= clusters else "space"
        if not self.root_growable:
            return "root"
        return None if self.usable_free >= clusters + 1 else "space"  # the root grows by a cluster


@dataclass
class Census:
    """What a walk of the whole filesystem found."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    entries: int = 0
    room: Room = field(default_factory=Room)


class FatTable:
    """The active FAT as a sequence of next-cluster values, read in place (no copy of the FAT is made)."""

    def __init__(self, geo: Geometry, fat: bytes) -> None:
        self.bits = geo.fat_bits
        self.fat = fat
        if self.bits == 32:
            self.words = memoryview(fat)[: (len(fat) // 4) * 4].cast("I")
        elif self.bits == 16:
            self.words = memoryview(fat)[: (len(fat) // 2) * 2].cast("H")

    def __getitem__(self, cluster: int) -> int:
        if self.bits == 32:
            return self.words[cluster] & 0x0FFFFFFF
        if self.bits == 16:
            return self.words[cluster]
        value = int.from_bytes(self.fat[cluster + cluster // 2 : cluster + cluster // 2 + 2], "little")
        return value >> 4 if cluster & 1 else value & 0xFFF


def _first_difference(reader: FatReader, index: int, active: bytes, span: int) -> int | None:
    """The first byte at which FAT copy ``index`` differs from the active one (compared a MiB at a time)."""
    chunk = 1 << 20
    base = reader.geo.fat_offset(index)
    for start in range(0, span, chunk):
        length = min(chunk, span - start)
        other = reader.pread(base + start, length)
        if other != active[start : start + length]:
            return start + next(i for i in range(length) if other[i] != active[start + i])
    return None


def _fat_span(geo: Geometry) -> int:
    """Bytes of a FAT that describe clusters 0 .. cluster_count + 1."""
    return -(-(geo.cluster_count + 2) * geo.fat_bits // 8)


class _Walk:
    """Marks every cluster of every chain; reports a chain that leaves the volume, loops, runs into a free
    or bad cluster, or meets another chain (one byte per cluster: the owner is looked up only on damage)."""

    def __init__(self, reader: FatReader, table: FatTable, census: Census, max_entries: int) -> None:
        self.reader, self.geo, self.table, self.census = reader, reader.geo, table, census
        self.max_entries = max_entries
        self.limit = self.geo.cluster_count + 2
        self.used = bytearray(self.limit)
        self.chains: list[tuple[str, int]] = []  # (path, first cluster), to name the other side of a cross-link

    def claim(self, start: int, path: str, size: int | None = None) -> list[int] | None:
        """The chain from ``start``, each cluster marked; None (and a problem) when it is broken."""
        geo, table, used, problems = self.geo, self.table, self.used, self.census.problems
        eoc, bad, limit = geo.eoc_min, geo.bad, self.limit
        chain: list[int] = []
        cluster = start
        while True:
            if not 2 <= cluster < limit:
                problems.append(f"{path}: its cluster chain leaves the volume (cluster {cluster})")
                return None
            if used[cluster]:
                if cluster in chain:
                    problems.append(f"{path}: its cluster chain loops (at cluster {cluster})")
                else:
                    problems.append(f"{path} and {self._owner(cluster)} share cluster {cluster} (cross-linked)")
                return None
            used[cluster] = 1
            chain.append(cluster)
            nxt = table[cluster]
            if nxt >= eoc:
                break
            if nxt in (0, 1) or nxt == bad or nxt >= limit:
                what = "a free" if nxt == 0 else "a bad" if nxt == bad else "an invalid"
                problems.append(f"{path}: its cluster chain runs into {what} cluster after cluster {cluster}")
                return None
            cluster = nxt
        self.chains.append((path, start))
        if size is not None and len(chain) != -(-size // geo.cluster_size):
            problems.append(f"{path}: {size} bytes, but its chain holds {len(chain)} clusters of {geo.cluster_size}")
        return chain

    def _owner(self, cluster: int) -> str:
        """Which walked chain holds ``cluster`` (only asked once damage is found)."""
        for path, start in self.chains:
            seen, current = 0, start
            while 2 <= current < self.limit and seen <= self.geo.cluster_count:
                if current == cluster:
                    return path
                current, seen = self.table[current], seen + 1
                if current >= self.geo.eoc_min:
                    break
        return "another chain"

    def tree(self) -> None:
        geo, reader, census = self.geo, self.reader, self.census
        if geo.fat_bits == 32:
            root = self.claim(geo.root_cluster, "the root directory")
            if root is None:
                return
            root_extents = self._extents(root)
        else:
            root_extents = [(geo.root_dir_offset, geo.root_dir_bytes)]
        census.room.root_free_run = _longest_free_run(reader, root_extents)
        pending = [(root_extents, "")]
        while pending:
            extents, where = pending.pop()
            if _after_end_marker(reader, extents):
                census.problems.append(
                    f"{where or 'the root directory'} holds entries after its end marker "
                    "(mtools stops reading there, Linux and fsck.fat read on)"
                )
            for entry in reader.entries_in(extents):
                if (entry.attr & ATTR_VOLUME and not entry.attr & ATTR_DIR) or entry.short_name in (".", ".."):
                    continue
                census.entries += 1
                if census.entries > self.max_entries:
                    census.problems.append(f"more than {self.max_entries} files and directories: too many to check")
                    return
                path = f"{where}/{entry.name}"
                bad = [c for c in entry.name if c in "/\\" or ord(c) < 0x20 or c == "\x7f"]
                if bad or entry.name in ("", ".", ".."):
                    census.problems.append(
                        f"an entry in {where or '/'} is named {entry.name!r}, which no FAT name may be"
                    )
                    continue
                if entry.is_dir:
                    try:
                        first = reader.subdir_cluster(entry)
                    except FatCorrupt as exc:  # points back at the root, or outside the volume
                        census.problems.append(f"{where or '/'}: {exc}")
                        continue
                    chain = self.claim(first, path)
                    if chain is not None:
                        pending.append((self._extents(chain), path))
                elif entry.first_cluster:
                    self.claim(entry.first_cluster, path, entry.size)
                elif entry.size:
                    census.problems.append(f"{path}: {entry.size} bytes, but no cluster")

    def _extents(self, chain: list[int]) -> list[tuple[int, int]]:
        size = self.geo.cluster_size
        return [(self.geo.cluster_offset(first), count * size) for first, count in runs(chain)]


def _longest_free_run(reader: FatReader, extents: list[tuple[int, int]], freed: frozenset[int] = frozenset()) -> int:
    """The longest run of free directory slots (deleted ones, every slot from the end marker on, and the
    slots at the byte offsets ``freed``: entries about to be removed)."""
    best = run = seen = 0
    total = sum(length // 32 for _, length in extents)
    for base, length in extents:
        data = reader.pread(base, length)
        for pos in range(0, length - 31, 32):
            first = data[pos]
            if first == 0x00:
                return max(best, run + total - seen)
            seen += 1
            run = run + 1 if first == 0xE5 or base + pos in freed else 0
            best = max(best, run)
    return best


def _after_end_marker(reader: FatReader, extents: list[tuple[int, int]]) -> bool:
    """Does a live slot follow the end marker?  mtools stops reading there; Linux and fsck.fat read on."""
    ended = False
    for base, length in extents:
        data = reader.pread(base, length)
        for pos in range(0, length - 31, 32):
            first = data[pos]
            if first == 0x00:
                ended = True
            elif ended and first != 0xE5:
                return True
    return False


def _dirty(geo: Geometry, table: FatTable) -> bool:
    if geo.dirty:
        return True
    if geo.fat_bits == 16:
        return not table[1] & 0x8000
    if geo.fat_bits == 32:
        return not table[1] & 0x08000000
    return False


def take(reader: FatReader, *, max_entries: int = MAX_ENTRIES) -> Census:
    """Walk the whole filesystem behind ``reader`` (fresh reads) and say what is wrong with it.

    Memory: the active FAT (read once, also what the undo journal keeps) and one byte per cluster.
    """
    geo = reader.geo
    census = Census()
    reader.forget()
    fat = reader.load_fat(refresh=True)
    span = _fat_span(geo)
    if geo.num_fats > 1 and geo.mirrored:
        for index in range(geo.num_fats):
            first = None if index == geo.active_fat else _first_difference(reader, index, fat, span)
            if first is not None:
                census.problems.append(
                    f"the FAT copies disagree (FAT {index + 1} differs from FAT "
                    f"{geo.active_fat + 1} at cluster {first * 8 // geo.fat_bits})"
                )
    table = FatTable(geo, fat)
    if _dirty(geo, table):
        census.warnings.append("it was not cleanly unmounted (its dirty flag is set)")
    census.room = Room(
        free_clusters=reader.free_clusters(fat), recorded_free=reader.fsinfo_free(), root_growable=geo.fat_bits == 32
    )
    _Walk(reader, table, census, max_entries).tree()
    return census


def room(reader: FatReader, freeing: Iterable[DirEntry] = ()) -> Room:
    """Free clusters and root slots now, or once the root entries ``freeing`` are removed (fresh reads;
    exact on a sound stick, where every cluster of a chain is its file's alone)."""
    geo = reader.geo
    reader.forget()
    free = reader.free_clusters(reader.load_fat(refresh=True))
    recorded = reader.fsinfo_free()
    freed_slots: set[int] = set()
    for entry in freeing:
        clusters = len(reader.chain(entry.first_cluster))
        free += clusters
        recorded = None if recorded is None else recorded + clusters
        freed_slots.update(entry.slots)
    extents = reader.dir_extents(None)
    return Room(
        free_clusters=free,
        recorded_free=recorded,
        root_free_run=_longest_free_run(reader, extents, frozenset(freed_slots)),
        root_growable=geo.fat_bits == 32,
    )
