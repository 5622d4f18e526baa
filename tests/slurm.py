"""A private single-node SLURM cluster for tests (``tests/test_hpc.py``).

Debian's ``slurm-wlm`` and ``munge`` packages are enough: ``munged`` runs with a fresh key and its
own socket, ``slurmctld`` and ``slurmd`` run as root in the foreground (``-D``), all in one
temporary folder, on free loopback ports, with ``ProctrackType=proctrack/linuxproc`` and
``TaskPlugin=task/none`` (no cgroups needed). The partition oversubscribes each core (four jobs
may share one), so several one-core jobs run at once on a 2-CPU machine. Nothing of the
machine's own SLURM or munge setup is read or changed: clients find this cluster through
``SLURM_CONF``, which :meth:`PrivateSlurm.env` gives.

``python tests/slurm.py`` starts one and waits (Ctrl-C stops it), printing the
``SLURM_CONF=...`` line to try ``sbatch`` / ``squeue`` by hand; ``--check`` starts one, runs a
job and stops (exit status 0 when that worked).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

PARTITION = "omniqtest"
OTHER_PARTITION = "short"  # a second partition (walltime at most 5 minutes)
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


class SlurmUnavailable(RuntimeError):
    """SLURM could not be started here; the message says why (tests skip with it)."""


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _hardware() -> str:
    """The node's hardware as ``slurmd -C`` sees it (so slurmd agrees with its own config)."""
    try:
        out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
    fields = [f for f in out.split() if f.split("=", 1)[0] in keep]
    if not any(f.startswith("CPUs=") for f in fields):
        fields = [f"CPUs={os.cpu_count() or 1}"]
    mem_mb = 1024
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo") as f:
        mem_mb = int(f.readline().split()[1]) // 1024
    fields.append(f"RealMemory={max(256, int(mem_mb * 0.8))}")
    return " ".join(fields)


class PrivateSlurm:
    """``munged`` + ``slurmctld`` + ``slurmd`` in a temporary folder. Use as a context manager,
    or ``start()`` / ``stop()``. Must run as root (slurmd starts jobs as their user)."""

    def __init__(self, *, jobs_per_core: int = 4, kill_wait: int = 5) -> None:
        self.jobs_per_core = jobs_per_core
        self.kill_wait = kill_wait
        self.dir = ""
        self.conf = ""
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[object] = []

    # --- lifecycle --------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> PrivateSlurm:
        missing = [b for b in BINARIES if shutil.which(b) is None]
        if missing:
            raise SlurmUnavailable(
                f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge; "
                ".ci/slurm-setup.sh does it)")
        if os.geteuid() != 0:
            raise SlurmUnavailable("a private SLURM needs root (slurmd starts jobs as their user)")
        self.dir = tempfile.mkdtemp(prefix="omniq-slurm-")
        os.chmod(self.dir, 0o755)  # jobs (root here) write their logs elsewhere; slurmd reads
        try:
            self._start_munge()
            self._write_conf()
            self._start("slurmctld", ["slurmctld", "-D", "-f", self.conf])
            self._wait(lambda: self._run("sinfo", "-h").returncode == 0, timeout, "slurmctld to answer")
            self._start("slurmd", ["slurmd", "-D", "-N", "localhost", "-f", self.conf])
            self._wait(self._node_up, timeout, "the node to be idle")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        # cancel what is left first, so slurmd kills its jobs' processes
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            with contextlib.suppress(Exception):
                self._run("scancel", "--full", "-u", "root", timeout=10)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and self.jobs():
                    time.sleep(0.2)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.pop(name, None)
            if p is None:
                continue
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for f in self._logs:
            with contextlib.suppress(Exception):
                f.close()  # type: ignore[attr-defined]
        self._logs.clear()
        if self.dir and not os.environ.get("OMNIQ_KEEP_SLURM_DIR"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivateSlurm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- for tests ----------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """Variables that point SLURM's commands at this cluster."""
        return {"SLURM_CONF": self.conf}

    def jobs(self) -> list[tuple[str, str, str]]:
        """``(job id, state, name)`` of every job in ``squeue`` (array tasks one by one)."""
        out = self._run("squeue", "-h", "-r", "-o", "%i|%T|%j").stdout
        return [tuple(line.split("|", 2)) for line in out.splitlines() if line.strip()]  # type: ignore[misc]

    def log_tail(self, n: int = 40) -> str:
        """The last lines of the daemons' logs (for a failing test's message)."""
        parts = []
        for name in ("slurmctld", "slurmd", "munged"):
            path = os.path.join(self.dir, f"{name}.log")
            with contextlib.suppress(OSError), open(path, errors="replace") as f:
                parts.append(f"--- {name}.log\n" + "".join(f.readlines()[-n:]))
        return "\n".join(parts)

    # --- internals ----------------------------------------------------------------------------
    def _run(self, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **self.env()})

    def _start(self, name: str, cmd: list[str]) -> None:
        out = open(os.path.join(self.dir, f"{name}.out"), "wb")  # noqa: SIM115 (closed in stop)
        self._logs.append(out)
        self.procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            env={**os.environ, **self.env()})

    def _wait(self, ready: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise SlurmUnavailable(f"{name} exited ({p.returncode}) while waiting for {what}:\n"
                                           + self._output(name) + self.log_tail())
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.2)
        raise SlurmUnavailable(f"timed out after {timeout:g} s waiting for {what}\n" + self.log_tail())

    def _output(self, name: str) -> str:
        with contextlib.suppress(OSError), open(os.path.join(self.dir, f"{name}.out"), errors="replace") as f:
            return f.read()[-3000:]
        return ""

    def _node_up(self) -> bool:
        out = self._run("sinfo", "-h", "-N", "-o", "%T").stdout.strip().lower()
        return out.startswith(("idle", "mixed", "allocated"))

    def _start_munge(self) -> None:
        d = self.dir
        key = os.path.join(d, "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        self.munge_socket = os.path.join(d, "munge.socket")
        self._start("munged", [
            "munged", "-F", "--force", f"--key-file={key}", f"--socket={self.munge_socket}",
            f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log", f"--seed-file={d}/munged.seed",
            "--num-threads=4",
        ])
        self._wait(lambda: os.path.exists(self.munge_socket), 20, "munged's socket")

    def _write_conf(self) -> None:
        d = self.dir
        ctld_port, slurmd_port = _free_ports(2)
        for sub in ("state", "spool"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        self.conf = os.path.join(d, "slurm.conf")
        lines = [
            "ClusterName=omniqtest",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={d}/state",
            f"SlurmdSpoolDir={d}/spool",
            f"SlurmctldPidFile={d}/slurmctld.pid",
            f"SlurmdPidFile={d}/slurmd.pid",
            f"SlurmctldLogFile={d}/slurmctld.log",
            f"SlurmdLogFile={d}/slurmd.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SwitchType=switch/none",
            "MpiDefault=none",
            "SchedulerType=sched/backfill",
            # start jobs as soon as they are submitted, check time limits often
            "SchedulerParameters=sched_interval=2,defer_batch=0",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",
            f"KillWait={self.kill_wait}",
            "MinJobAge=2",  # finished jobs leave squeue quickly
            "InactiveLimit=0",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            "MessageTimeout=20",
            f"NodeName=localhost NodeAddr=127.0.0.1 {_hardware()} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP "
            f"OverSubscribe=FORCE:{self.jobs_per_core}",
            f"PartitionName={OTHER_PARTITION} Nodes=localhost MaxTime=5 State=UP "
            f"OverSubscribe=FORCE:{self.jobs_per_core}",
        ]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")


@contextlib.contextmanager
def private_slurm(**kwargs: int) -> Iterator[PrivateSlurm]:
    s = PrivateSlurm(**kwargs)
    s.start()
    try:
        yield s
    finally:
        s.stop()


if __name__ == "__main__":
    import sys

    if "--check" in sys.argv[1:]:  # start, run one job, stop: says whether tests/test_hpc.py can run
        try:
            with private_slurm() as s:
                out = s._run("sbatch", "--parsable", "--output=/dev/null", "--wrap=true").stdout.strip()
                deadline = time.monotonic() + 60
                while s.jobs() and time.monotonic() < deadline:
                    time.sleep(0.2)
                print(f"private SLURM ok (job {out} ran)")
        except SlurmUnavailable as exc:
            print(f"private SLURM unavailable: {exc}", file=sys.stderr)
            sys.exit(1)
        sys.exit(0)
    with private_slurm() as s:
        print(f"SLURM_CONF={s.conf}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
