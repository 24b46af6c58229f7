"""When two names are the same name on a FAT stick: one rule for every reader and writer.

FAT keeps a long name in UTF-16 and an 8.3 short name in the OEM code page, and looks a
name up case-insensitively against both.  How far "case-insensitively" goes depends on who
asks: the Linux vfat driver folds ASCII (and, with an ``iocharset``, that charset's letters);
mtools upper-cases each character with ``towupper`` when it builds a short name, so
``ſx.txt`` (U+017F, LATIN SMALL LETTER LONG S) is stored as the short name ``SX.TXT`` and
found again as ``sx.txt``.

:func:`fold` is the union of those rules: every character goes through its simple Unicode
upper-case mapping and then its simple lower-case mapping, one character to one character
(``ſ``→``s``, ``K`` KELVIN SIGN→``k``, dotless ``ı``→``i``, ``İ``→``i``; ``ß`` stays ``ß``,
as in mtools).  Two names that any of those readers could take for each other fold to the
same string, so a look-alike can never slip past a check made with :func:`same`.  It errs
towards "the same": a name it calls equal that one reader would not is still refused or
removed explicitly, never written over by accident.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

#: Characters whose full lower-case mapping has several characters but whose simple one is ASCII.
_SIMPLE_LOWER = {"\u0130": "i"}  # LATIN CAPITAL LETTER I WITH DOT ABOVE -> i (full: i + U+0307)

ARCHIVE_PREFIX = "certificates-omni_"
ARCHIVE_SUFFIX = ".zip"
#: FAT's limit on a long name, in UTF-16 code units.
MAX_NAME = 255
#: ``.<name>.<pid>.tmp``: the temporary name ``write_atomic`` writes before renaming (on folded names).
_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<pid>[0-9]+)\.tmp")


def _fold_char(char: str) -> str:
    simple = _SIMPLE_LOWER.get(char)
    if simple is not None:
        return simple
    upper = char.upper()
    if len(upper) == 1:
        char = upper
    lower = char.lower()
    return lower if len(lower) == 1 else char


@lru_cache(maxsize=256)  # the names of the sticks in view; a large cache only grows the heap
def fold(name: str) -> str:
    """The form in which FAT-equal names are equal (see the module's docstring)."""
    if name.isascii():
        return name.lower()
    return "".join(_fold_char(char) for char in name)


def same(a: str, b: str) -> bool:
    """Are ``a`` and ``b`` one name on a FAT stick?"""
    return a == b or fold(a) == fold(b)


def utf16_length(name: str) -> int:
    """Length as FAT counts it (UTF-16 code units)."""
    return len(name.encode("utf-16-le")) // 2


def slots_for(name: str) -> int:
    """Directory entries a long name takes: one per 13 UTF-16 units, plus the 8.3 entry."""
    return -(-utf16_length(name) // 13) + 1


def is_archive_name(name: str) -> bool:
    """Could a FAT reader take ``name`` for ``certificates-omni_<something>.zip``?"""
    folded = fold(name)
    return (
        folded.startswith(ARCHIVE_PREFIX)
        and folded.endswith(ARCHIVE_SUFFIX)
        and len(folded) > len(ARCHIVE_PREFIX) + len(ARCHIVE_SUFFIX)
    )


def temp_of(name: str) -> tuple[str, int] | None:
    """``(folded name, pid)`` when ``name`` is a temporary of ``write_atomic``, else None.

    The pid is kept as written; one that no process can have is still returned (the caller
    decides: nothing alive can own it).
    """
    match = _TEMP.fullmatch(fold(name))
    return None if match is None else (match["name"], int(match["pid"]))


def is_archive_temp(name: str) -> bool:
    """Is ``name`` a temporary ``write_atomic`` made for an archive (possibly cut at 255)?"""
    found = temp_of(name)
    return found is not None and found[0].startswith(ARCHIVE_PREFIX)


def clashes(new: Iterable[str], existing: Iterable[str] = ()) -> list[tuple[str, str]]:
    """Pairs of distinct names (a new one first) whose archives would be one name on FAT."""
    seen: dict[str, str] = {}
    for name in existing:
        seen.setdefault(fold(name), name)
    found = []
    for name in new:
        other = seen.get(fold(name))
        if other is not None and other != name:
            found.append((name, other))
        seen.setdefault(fold(name), name)
    return found
