"""Naming a results store: a path or URL as SQLAlchemy's URL, as messages show it, the
SQLite file it names, and the URIs SQLite opens that file by.

A path is taken literally: `?`, `#`, `%` and bytes that are not UTF-8 reach SQLite
percent-encoded in a `file:` URI, never read as URL syntax. A location that cannot be
used (empty, a user without a home folder, a symlink loop, a folder on the way that
cannot be searched, a name too long, a URL that does not parse or names an unknown
kind of database) is bad input naming it, with any password masked.
"""

from __future__ import annotations

import errno
import os
import re
from functools import cache
from pathlib import Path
from urllib.parse import quote_from_bytes

from racli.errors import BadInput


def make_url(text: str):
    """SQLAlchemy's URL parser, imported when a URL is parsed: the SQLite URIs below serve
    shell completion (racli.store.recent), which must not load SQLAlchemy."""
    from sqlalchemy.engine import make_url as parse

    return parse(text)


#: the kinds of location ra documents (any other SQLAlchemy dialect installed works too)
SUPPORTED = "a SQLite file path or sqlite:///PATH, or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"


def database_url(db: str) -> str:
    """A filesystem path becomes a SQLite URL; a URL is kept as it is, except that a
    plain PostgreSQL URL (`postgresql://`, `postgres://`) gets ra's driver, psycopg 3.
    Every character of a path is taken literally (see `_sqlite_file_url`)."""
    if "://" not in db:
        return _sqlite_file_url(local_path(db))
    scheme, rest = db.split("://", 1)
    url = f"postgresql+psycopg://{rest}" if scheme in ("postgresql", "postgres") else db
    if scheme.startswith("sqlite"):
        url = _sqlite_driver(db, scheme, rest)
    _check_url(db, url)
    if url.startswith("sqlite:"):
        _check_sqlite_arguments(db, url)
    return url


def _sqlite_driver(db: str, scheme: str, rest: str) -> str:
    """`sqlite+pysqlite://` names the driver `sqlite://` uses: written `sqlite://`. ra opens
    SQLite stores through that driver alone (its read-only and busy-wait settings are
    that driver's), so another is bad input."""
    if scheme in ("sqlite", "sqlite+pysqlite"):
        return f"sqlite://{rest}"
    raise BadInput(
        f"cannot open database {shown(db)}: ra opens SQLite files through Python's sqlite3 "
        f"driver: write sqlite:///PATH or the path"
    )


def _check_sqlite_arguments(db: str, url: str) -> None:
    """A SQLite URL's query arguments are not passed on: ra opens the file itself (reading
    commands read-only), so `?mode=ro` and the like would be ignored or fail late. Only
    `uri=true` on a `file:` URI, the form ra writes for paths URL syntax would misread,
    is read."""
    parsed = make_url(url)
    given = dict(parsed.query)
    file_uri = (parsed.database or "").startswith("file:")
    if not given or (file_uri and set(given) == {"uri"} and _true(given["uri"])):
        return
    names = ", ".join(sorted(k for k in given if not (file_uri and k == "uri")))
    raise BadInput(
        f"cannot open database {shown(db)}: ra does not pass a SQLite URL's arguments on "
        f"({names}); name the file alone (reading commands open it read-only themselves)"
    )


def _true(value) -> bool:
    return str(value).lower() in ("true", "1")


def _sqlite_file_url(path: Path) -> str:
    """The SQLAlchemy URL of the SQLite file at `path`: `sqlite:///PATH`, or, for a path
    that URL syntax would misread (`?`, `%`) or that is not UTF-8, a URL that opens it
    through a percent-encoded `file:` URI. Newer SQLAlchemy versions percent-decode a
    URL's database part once; that decoding is undone in advance so that SQLite receives
    the URI with its escapes."""
    text = str(path)
    if "?" not in text and "%" not in text and text.isprintable() and _utf8(text):
        return f"sqlite:///{text}"
    uri = sqlite_uri(path)
    if _url_decodes_database():
        uri = uri.replace("%", "%25")
    return f"sqlite:///{uri}?uri=true"


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes of a file name that are not UTF-8
        return False
    return True


@cache
def _url_decodes_database() -> bool:
    return make_url("sqlite:///%25").database == "%"


def sqlite_uri(path: Path, **params: str) -> str:
    """SQLite's `file:` URI of `path` with query `params`: the path's bytes percent-encoded
    (any name the filesystem holds, UTF-8 or not)."""
    uri = "file:" + quote_from_bytes(os.fsencode(path), safe="/")
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{uri}?{query}" if query else uri


def sqlite_ro_uri(path: Path, immutable: bool) -> str:
    """The URI that opens `path` without writing: `mode=ro`, or `immutable=1`."""
    return sqlite_uri(path, immutable="1") if immutable else sqlite_uri(path, mode="ro")


def _check_url(db: str, url: str) -> None:
    """BadInput, naming `db` with its password masked, when `url` does not parse or names
    a kind of database SQLAlchemy does not know."""
    try:
        parsed = make_url(url)
    except ValueError as exc:  # a port that is not a number
        raise BadInput(f"cannot open database {shown(db)}: {_url_problem(db, exc)}") from None
    except Exception:  # ArgumentError: not a URL at all
        raise BadInput(
            f"cannot open database {shown(db)}: not a database URL ({SUPPORTED})"
        ) from None
    try:
        parsed.get_dialect()
    except Exception:  # NoSuchModuleError: no dialect of that name
        raise BadInput(
            f"cannot open database {shown(db)}: unknown kind of database "
            f"{parsed.drivername!r} (ra reads {SUPPORTED})"
        ) from None


def _url_problem(db: str, exc: ValueError) -> str:
    """What is wrong with a URL whose port SQLAlchemy could not read."""
    authority = db.split("://", 1)[-1].split("/", 1)[0].rpartition("@")[2]
    if authority.startswith("[") and "]" not in authority:
        return f"the IPv6 host {authority!r} has no closing ']'"
    found = re.search(r"'(.*)'", str(exc))
    port = found.group(1) if found else authority.rpartition(":")[2]
    return f"port {port!r} is not a number"


#: scheme://user:password@ in a string, up to its last '@' (a password may hold '@' or '/')
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@]*:)(.*)@")


#: a password given as a query argument (libpq reads `password` and `sslpassword` there)
_QUERY_PASSWORD = re.compile(r"([?&](?:ssl)?password=)[^&#]*", re.I)


def shown(db: str) -> str:
    """`db` as messages print it: a URL's password masked (in its user part or as a query
    argument), also in a URL that does not parse."""
    if "://" not in db:
        return db
    return query_password_masked(_user_part_masked(db))


def query_password_masked(url: str) -> str:
    """`url` with the value of a `password` or `sslpassword` query argument masked."""
    return _QUERY_PASSWORD.sub(r"\1***", url)


def _user_part_masked(db: str) -> str:
    try:
        url = make_url(db)
        if not (url.host and "@" in url.host):  # else the password's rest sits in the host
            if url.password is None:
                return db  # as given: rendering would percent-encode a SQLite name's ':'
            return url.render_as_string(hide_password=True)
    except Exception:
        pass
    return _USERINFO.sub(r"\1***@", db)


def local_path(db: str, *, expand: bool = True) -> Path:
    """The absolute path of a store given as a filesystem path (`~` expanded unless
    `expand` is false). BadInput naming it when it is empty, or cannot be used: a user
    without a home folder, a symlink loop, a folder on the way that cannot be searched or
    is a file, a name too long."""
    if not db.strip():
        raise BadInput(f"the database location {db!r} is empty: give a file path or a URL")
    path = Path(db)
    if expand:
        try:
            path = path.expanduser()
        except RuntimeError:
            user = db.split("/", 1)[0]
            raise BadInput(
                f"cannot use database path {db}: {user} names no user with a home folder"
            ) from None
    try:
        path = path.resolve()
        os.stat(path)
    except FileNotFoundError:
        pass
    except RuntimeError:  # Python before 3.13: a symlink loop
        raise BadInput(f"cannot use database path {db}: it is a symbolic link loop") from None
    except OSError as exc:
        raise BadInput(f"cannot use database path {db}: {_path_problem(path, exc)}") from None
    return path


def _path_problem(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ENOTDIR:
        for parent in path.parents:
            if parent.exists() and not parent.is_dir():
                return f"{parent} is a file, not a folder"
    if exc.errno == errno.ELOOP:
        return "it is a symbolic link loop"
    if exc.errno == errno.EACCES:
        return "permission denied (a folder on its path cannot be searched)"
    return (exc.strerror or str(exc)).lower()


def sqlite_path(db: str) -> Path | None:
    """The file of a SQLite location (a path, or a `sqlite:///` or `sqlite+pysqlite:///`
    URL), None for a server or an in-memory database."""
    if "://" not in db:
        return local_path(db)
    if not db.startswith("sqlite"):
        return None
    text = database_url(db)  # a URL that does not parse is bad input
    if not text.startswith("sqlite:///"):
        return None
    url = make_url(text)
    name = url.database or ""
    if name.startswith("file:") and _true(url.query.get("uri", "")):
        from urllib.parse import unquote_to_bytes

        name = os.fsdecode(unquote_to_bytes(name[len("file:") :].split("?", 1)[0]))
    if name in ("", ":memory:"):
        return None
    return local_path(name, expand=False)


#: the files SQLite keeps beside a database (write-ahead log, its index, rollback journal)
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def in_memory(db: str) -> bool:
    """Whether `db` names a SQLite database in memory (`sqlite://`, `:memory:`), which
    keeps nothing once the process ends."""
    url = database_url(db)
    return url.startswith("sqlite") and sqlite_path(db) is None


def refuse_in_memory(db: str) -> None:
    if in_memory(db):
        raise BadInput(
            f"database {shown(db)} is in memory: it keeps nothing once ra exits; give a "
            f"file path or a server URL"
        )
