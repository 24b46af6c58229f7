"""Any exception as a :class:`~agent.errors.PanostageError`: the one place that maps them.

Service errors are translated by :mod:`agent.aws.errors` (only when botocore is loaded: no other
code raises them), the state database's by the table below, the rest by kind.  Kept apart from
:mod:`agent.errors` so that module depends on nothing and :mod:`agent.aws.errors` can build on it.
"""

from __future__ import annotations

from agent.errors import ExitCode, PanostageError


def to_error(exc: BaseException) -> PanostageError:
    """Map any exception to a :class:`PanostageError` (the one place that does so)."""
    import sys

    if isinstance(exc, PanostageError):
        return exc
    if "botocore" in sys.modules:
        from agent.aws.errors import translate

        translated = translate(exc)
        if translated is not None:
            return translated
    if "sqlite3" in sys.modules:
        import sqlite3

        if isinstance(exc, sqlite3.DatabaseError):  # OperationalError included
            mapped = _sqlite_error(exc)
            if mapped is not None:
                return mapped
    if isinstance(exc, OSError) and database_of(exc):
        return _state_db_os_error(exc)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return PanostageError(
            f"{exc.strerror or exc}{where}",
            exit_code=ExitCode.IO,
            reason="io",
            hint="check the path, its permissions and free space",
        )
    return PanostageError(
        f"unexpected {type(exc).__name__}: {exc}",
        hint="this is a bug in panostage; run again with --debug and report the traceback",
    )


#: SQLite result codes (by name prefix, or by message when the name is missing) and what to do.
_SQLITE_FAULTS: tuple[tuple[tuple[str, ...], tuple[str, ...], str], ...] = (
    (
        ("SQLITE_FULL",),
        ("database or disk is full",),
        "free space on the filesystem holding the state directory, then run the command again",
    ),
    (
        ("SQLITE_READONLY",),
        ("readonly database",),
        "the state directory's filesystem is read-only or the database file is not writable: remount it "
        "read-write (dmesg says why it went read-only) or give the user running panostage write access",
    ),
    (
        ("SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH"),
        ("unable to open database file", "access permission denied"),
        "check that the state directory exists and that the user running panostage may read and write it "
        "and the files in it (owner, mode)",
    ),
    (
        ("SQLITE_CORRUPT", "SQLITE_NOTADB"),
        ("database disk image is malformed", "file is not a database"),
        "the database is damaged: stop panostage, move the database file (and its -wal and -shm files) aside and "
        "restore it from a backup; without one, a new empty database is created (the plan and enrolled sticks "
        "must then be entered again)",
    ),
    (
        ("SQLITE_IOERR",),
        ("disk i/o error",),
        "the state directory's disk reported an I/O error: check dmesg, free space and the disk's health",
    ),
)


def _sqlite_error(exc: Exception) -> PanostageError | None:
    """The state database's failures (full, read-only, damaged, locked) as IO / CONFLICT errors."""
    name = getattr(exc, "sqlite_errorname", None) or ""
    text = str(exc)
    database = database_of(exc) or "(panostage.sqlite3 in the state directory)"
    details = {"database": database, "sqlite_error": name or None}
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "is locked" in text.lower():
        return PanostageError(
            f"state database {database}: {text}",
            exit_code=ExitCode.CONFLICT,
            reason="state-db-locked",
            hint="another panostage process holds it (the daemon, or a long command): wait for it, then run this "
            "again; `fuser` on the database file shows which process",
            details=details,
        )
    for names, texts, hint in _SQLITE_FAULTS:
        if name.startswith(names) or any(t in text.lower() for t in texts):
            return PanostageError(
                f"state database {database}: {text}",
                exit_code=ExitCode.IO,
                reason="state-db",
                hint=hint,
                details=details,
            )
    return None


def _state_db_os_error(exc: OSError) -> PanostageError:
    """The state database could not even be opened (read-only, full, no permission, I/O error)."""
    import errno

    by_errno = {
        errno.ENOSPC: "SQLITE_FULL",
        errno.EDQUOT: "SQLITE_FULL",
        errno.EROFS: "SQLITE_READONLY",
        errno.EACCES: "SQLITE_CANTOPEN",
        errno.EPERM: "SQLITE_CANTOPEN",
        errno.ENOENT: "SQLITE_CANTOPEN",
        errno.ENOTDIR: "SQLITE_CANTOPEN",
    }
    like = by_errno.get(exc.errno or 0, "SQLITE_IOERR")
    hint = next(hint for names, _texts, hint in _SQLITE_FAULTS if like in names)
    name = errno.errorcode.get(exc.errno or 0, "error")
    database = database_of(exc)
    return PanostageError(
        f"state database {database}: cannot open it: {exc.strerror or exc} [{name}]"
        + (f" ({exc.filename})" if exc.filename and str(exc.filename) != database else ""),
        exit_code=ExitCode.IO,
        reason="state-db",
        hint=hint,
        details={"database": database, "errno": name},
    )


def name_database(exc: BaseException, path: str) -> None:
    """Mark ``exc`` as the state database's (at ``path``), so :func:`to_error` names the file."""
    exc.database = path  # type: ignore[attr-defined]  # an attribute of our own on the library's exception


def database_of(exc: BaseException) -> str | None:
    """The database file ``exc`` was marked with by :func:`name_database`, if any."""
    database = getattr(exc, "database", None)
    return database if isinstance(database, str) else None
