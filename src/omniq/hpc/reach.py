"""Which storage a batch job can open, and how: the storage-reach checks of a pool.

A job opens the same URLs as the OmniQ that started it, on another machine. A ``memory://``
store or ``sqlite://:memory:`` lives in this process: refused (``ConfigError`` naming the URL and
what would work). A relative SQLite path is made absolute. A path on a filesystem local to this
machine (``tmpfs``, ``/tmp``) is refused when the cluster has nodes other than this machine, and
SQLite on a network filesystem (NFS, Lustre, ...) gets a warning: its WAL locking works only
among processes of one host. ``localhost`` in a server URL is refused on a cluster of several
hosts (each node would dial itself). ``storage_tag`` names a task queue in job names.

The pool (``JobWorkers`` in ``base.py``) applies these with what it knows of the cluster and
turns the notes into ``StorageReachWarning``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..storage.base import masked

LOOPBACK_HOSTS = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "::1", "0.0.0.0", ""})
NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "sshfs", "9p", "afs", "ceph", "fuse.ceph",
    "glusterfs", "fuse.glusterfs", "lustre", "gpfs", "beegfs", "fuse.beegfs", "panfs", "wekafs",
    "fuse.juicefs", "virtiofs", "fuse.s3fs", "fuse.gcsfuse",
})
MEMORY_FS = frozenset({"tmpfs", "ramfs", "devtmpfs"})
LOCAL_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run")
SERVER_SCHEMES = frozenset({"postgresql", "postgres", "redis", "rediss", "nats", "tls"})
WHAT_WORKS = ("a SQLite file or a file:// folder on a filesystem the compute nodes share (e.g. "
              "sqlite:////home/me/lab.db), or postgresql://, redis:// or nats:// on a host they reach")


def mount_of(path: str) -> tuple[str, str]:
    """``(mount point, filesystem type)`` holding ``path`` (its nearest existing ancestor), from
    /proc/mounts; ``("", "")`` where that cannot be read. Says whether jobs on other nodes can
    see a file (a network filesystem) and whether SQLite's locking is safe there.

    Args:
        path: A file or folder path; it need not exist.

    Returns:
        ``(mount point, filesystem type)``, e.g. ``("/home", "nfs4")``.

    Examples:
        >>> from omniq.hpc.reach import mount_of
        >>> mount_of("/no/such/dir/lab.db")[0]  # the nearest existing ancestor: /
        '/'
    """
    p = os.path.realpath(path)
    while not os.path.exists(p) and p != os.path.dirname(p):
        p = os.path.dirname(p)
    best = ("", "")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mnt = fields[1].replace("\\040", " ")
                if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                    best = (mnt, fields[2])
    except OSError:
        pass
    return best


def local_names() -> set[str]:
    """Names and addresses of this machine (to tell whether a URL's host, or a cluster's
    nodes, are this machine).

    Returns:
        Lower-case host names (short and qualified), aliases and addresses, loopback included.

    Examples:
        >>> from omniq.hpc.reach import local_names
        >>> {"localhost", "127.0.0.1"} <= local_names()
        True
    """
    names = {"localhost", "127.0.0.1", "::1"}
    for get in (socket.gethostname, socket.getfqdn):
        with contextlib.suppress(OSError):
            n = get()
            names.update({n.lower(), n.split(".")[0].lower()})
    with contextlib.suppress(OSError):
        _, aliases, addrs = socket.gethostbyname_ex(socket.gethostname())
        names.update(a.lower() for a in aliases)
        names.update(addrs)
    return names


def is_local_host(host: str, names: set[str] | None = None) -> bool:
    """Whether ``host`` is this machine (loopback, or one of ``names``, default
    :func:`local_names`): a server URL naming it is unreachable from other nodes.

    Args:
        host: A host name or address (IPv6 in brackets or not).
        names: This machine's names; None looks them up.

    Returns:
        True for loopback (``localhost``, ``127.x``, ``::1``) or one of ``names``.

    Examples:
        >>> from omniq.hpc.reach import is_local_host
        >>> is_local_host("localhost"), is_local_host("127.0.1.1"), is_local_host("db.lab", {"vm"})
        (True, True, False)
    """
    h = host.strip("[]").lower()
    return h in LOOPBACK_HOSTS or h.startswith("127.") or h in (names if names is not None else local_names())


def job_url(role: str, url: str, *, cluster_local: bool | None) -> tuple[str, list[str]]:
    """The URL a job should open for ``role`` (relative SQLite paths made absolute), and warnings;
    a ``ConfigError`` naming the URL when a job could not reach it at all.

    Args:
        role: ``"tasks"``, ``"results"`` or ``"events"``, for messages.
        url: The URL as this process opens it.
        cluster_local: True when every node of the cluster is this machine, False when some
            is not, None when unknown.

    Returns:
        ``(url for the jobs, warnings)``; the warnings are texts for ``StorageReachWarning``.

    Raises:
        ConfigError: The store lives in this process (``memory://``, in-memory SQLite), is on
            a filesystem local to this machine while the cluster has other nodes, or names
            ``localhost`` on such a cluster.

    Examples:
        >>> from omniq.hpc.reach import job_url
        >>> job_url("tasks", "redis://db.lab:6379/0", cluster_local=False)
        ('redis://db.lab:6379/0', [])
        >>> job_url("tasks", "sqlite:////shared/lab.db", cluster_local=True)
        ('sqlite:////shared/lab.db', [])
        >>> from omniq import ConfigError
        >>> try:
        ...     job_url("tasks", "memory://", cluster_local=True)
        ... except ConfigError as e:
        ...     print(str(e).startswith("tasks URL 'memory://' is this process's memory"))
        True"""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    shown = masked(url)
    if scheme == "memory":
        raise ConfigError(
            f"{role} URL {shown!r} is this process's memory: jobs on the cluster cannot reach it. "
            f"Jobs need {WHAT_WORKS}")
    if scheme in ("sqlite", "file"):
        path, _, query = rest.partition("?")
        if scheme == "sqlite" and (path in (":memory:", "", "/:memory:") or path.startswith((":memory:", "/:memory:"))):
            raise ConfigError(
                f"{role} URL {shown!r} is an in-memory SQLite database of this process: jobs on the "
                f"cluster cannot reach it. Jobs need {WHAT_WORKS}")
        if scheme == "sqlite":
            path = path[1:] if path.startswith("/") else path  # sqlite:///rel.db -> rel.db, ////abs -> /abs
        path = os.path.abspath(os.path.expanduser(path))
        new = f"{scheme}://{'/' if scheme == 'sqlite' else ''}{path}" + (f"?{query}" if query else "")
        return new, _path_warnings(role, url, path, scheme, cluster_local)
    if scheme in SERVER_SCHEMES and sep:
        try:
            host = urlsplit(url).hostname or ""
        except ValueError:
            host = ""
        if is_local_host(host) and cluster_local is False:
            raise ConfigError(
                f"{role} URL {shown!r} names {host or 'this machine'}, which each compute node reads "
                f"as itself: use this machine's name or address as the nodes reach it "
                f"(e.g. {socket.getfqdn()}), or a server on the cluster's network")
        if is_local_host(host) and cluster_local is None:
            return url, [f"{role} URL {shown!r} names {host or 'this machine'}: jobs on other nodes "
                         f"cannot reach it there (fine when the cluster is this machine)"]
    return url, []


def _path_warnings(role: str, url: str, path: str, scheme: str, cluster_local: bool | None) -> list[str]:
    if cluster_local:
        return []  # one host: any path works, SQLite's locking included
    shown = masked(url)
    mnt, fstype = mount_of(path)
    local_dir = any(path == d or path.startswith(d + "/") for d in LOCAL_DIRS)
    if fstype in MEMORY_FS or local_dir:
        what = f"{mnt or path} ({fstype or 'local'})"
        if cluster_local is False:
            raise ConfigError(
                f"{role} URL {shown!r} is on {what}, local to this machine: jobs on other nodes "
                f"would each see their own, empty copy. Jobs need {WHAT_WORKS}")
        return [f"{role} URL {shown!r} is on {what}, local to this machine: jobs on other nodes "
                f"would not see it"]
    if scheme == "sqlite" and (fstype in NETWORK_FS or fstype.startswith("fuse")):
        return [f"{role} URL {shown!r} is SQLite on {fstype} ({mnt}): SQLite's locking (WAL) is safe "
                f"only among processes of one host, so jobs on several nodes may see 'database is "
                f"locked' or corrupt it. For many nodes use postgresql://, redis:// or nats://"]
    if fstype and fstype not in NETWORK_FS and cluster_local is False and not fstype.startswith("fuse"):
        return [f"{role} URL {shown!r} is on {mnt} ({fstype}), which looks local to this machine: "
                f"jobs on other nodes see it only if it is shared with them"]
    return []


def storage_tag(url: str) -> str | None:
    """Eight hex digits naming the task queue ``url`` (as jobs open it), carried in job names
    (``omniq-<tag>-<hex>``) so ``omniq status`` on that queue finds its jobs among the user's.
    Derived from the URL without its password (job names are public); SQLite and ``file://``
    by their resolved path. None for a queue no job could serve (``memory://``).

    Args:
        url: A task queue URL.

    Returns:
        Eight hex digits, or None.

    Examples:
        >>> from omniq.hpc import storage_tag
        >>> tag = storage_tag("postgresql://me:secret@db.lab/queue")
        >>> len(tag), tag == storage_tag("postgresql://me:other@db.lab/queue")
        (8, True)
        >>> storage_tag("memory://") is None
        True
    """
    try:
        url, _ = job_url("tasks", url, cluster_local=True)
    except ConfigError:
        return None
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme in ("sqlite", "file"):
        path = rest.partition("?")[0]
        key = f"{scheme}:{os.path.realpath(path[1:] if scheme == 'sqlite' else path)}"
    else:
        key = masked(url).rstrip("/")
    return hashlib.sha256(key.encode()).hexdigest()[:8]
