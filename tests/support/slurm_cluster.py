"""A real single-node Slurm cluster on 127.0.0.1 for the Slurm sweep test (needs root).

Debian's `slurm-wlm munge slurmdbd mariadb-server` packages, started without systemd or cgroups:
munged -> mariadbd -> slurmdbd -> slurmctld -> slurmd, every daemon in the foreground with its own
state, sockets, ports and logs in one temporary directory. Accounting (slurmdbd + MariaDB) is not
optional: without `sacct`, submitit cannot see a job that died without a result and waits forever.

`LocalSlurm` records each daemon's PID and stops exactly those. Clients find the cluster through
the `SLURM_CONF` variable in `LocalSlurm.env`. By hand:

    sudo .venv/bin/python tests/support/slurm_cluster.py     # starts it, prints SLURM_CONF, Ctrl-C stops it
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
from pathlib import Path

DAEMONS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sinfo", "sbatch", "sacct")


def missing_programs() -> list[str]:
    return [p for p in DAEMONS if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]


def _which(program: str) -> str:
    return shutil.which(program) or str(Path("/usr/sbin", program))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, name: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s:\n{_tail(log)}")


# sacct's states of a job that has ended (sacct writes CANCELLED as "CANCELLED by <uid>"). REQUEUED ends an
# attempt, not the job: another record follows it.
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else f"(no {path})"


class LocalSlurm:
    """Start with `start()` (or `with LocalSlurm() as slurm:`), stop with `stop()`."""

    def __init__(self, root: Path | None = None):
        # Not under pytest's tmp_path: that is mode 0700 and the munge and mysql users must enter it.
        self.root = Path(root or tempfile.mkdtemp(prefix="sae-slurm-"))
        self.root.chmod(0o755)
        self.conf = self.root / "slurm.conf"
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.node = socket.gethostname().split(".")[0]

    # ---- configuration -------------------------------------------------------------------------
    def _node_line(self) -> str:
        """The node as `slurmd -C` sees it: a mismatch would make slurmctld drain it."""
        out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
        line = next(row for row in out.splitlines() if row.startswith("NodeName="))
        return " ".join(t for t in line.split() if not t.startswith("NodeName=")) + " NodeAddr=127.0.0.1 State=UNKNOWN"

    def _write_configs(self) -> None:
        r = self.root
        self.ports = {k: _free_port() for k in ("mysql", "slurmdbd", "slurmctld", "slurmd")}
        for d in ("state", "spool", "log", "run"):
            (r / d).mkdir(exist_ok=True)
        auth = f"AuthType=auth/munge\nAuthInfo=socket={r / 'munge' / 'munge.socket'},cred_expire=10\n"
        self.conf.write_text(
            f"ClusterName=saetest\nSlurmctldHost={self.node}(127.0.0.1)\n{auth}CredType=cred/munge\n"
            f"SlurmUser=root\nSlurmdUser=root\nSlurmctldPort={self.ports['slurmctld']}\nSlurmdPort={self.ports['slurmd']}\n"
            f"StateSaveLocation={r / 'state'}\nSlurmdSpoolDir={r / 'spool'}\n"
            f"SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}\nSlurmdPidFile={r / 'run' / 'slurmd.pid'}\n"
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}\nSlurmdLogFile={r / 'log' / 'slurmd.log'}\n"
            "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\n"
            "MailProg=/bin/true\nReturnToService=2\nSchedulerType=sched/backfill\n"
            "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nMinJobAge=600\n"
            f"AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=127.0.0.1\n"
            f"AccountingStoragePort={self.ports['slurmdbd']}\n"
            f"AccountingStoragePass={r / 'munge' / 'munge.socket'}\n"  # the munge socket for slurmdbd connections
            f"NodeName={self.node} {self._node_line()}\n"
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n"
        )
        dbd = r / "slurmdbd.conf"
        dbd.write_text(
            f"{auth}DbdHost=localhost\nDbdAddr=127.0.0.1\nDbdPort={self.ports['slurmdbd']}\nSlurmUser=root\n"
            f"PidFile={r / 'run' / 'slurmdbd.pid'}\nLogFile={r / 'log' / 'slurmdbd.log'}\n"
            f"StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\nStoragePort={self.ports['mysql']}\n"
            "StorageUser=root\nStorageLoc=slurm_acct_db\n"
        )
        dbd.chmod(0o600)  # slurmdbd refuses a world-readable config

    # ---- daemons -------------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], log: Path, **kwargs) -> subprocess.Popen:
        out = open(log, "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, **kwargs)
        out.close()
        self.procs.append((name, proc))
        return proc

    def _start_munge(self) -> None:
        d = self.root / "munge"
        d.mkdir(exist_ok=True)
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        for p in (d, key):
            shutil.chown(p, "munge", "munge")
        key.chmod(0o400)
        d.chmod(0o755)
        log = self.root / "log" / "munged.log"
        proc = self._spawn(
            "munged",
            [
                _which("munged"),
                "--foreground",
                "--force",
                f"--key-file={key}",
                f"--socket={d / 'munge.socket'}",
                f"--pid-file={d / 'munged.pid'}",
                f"--seed-file={d / 'munged.seed'}",
                f"--log-file={log}",
            ],
            self.root / "log" / "munged.out",
            user="munge",
            group="munge",
        )
        deadline = time.monotonic() + 30
        while not (d / "munge.socket").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"munged did not start:\n{_tail(log)}\n{_tail(self.root / 'log' / 'munged.out')}")
            time.sleep(0.2)

    def _start_mariadb(self) -> None:
        data = self.root / "mysql"
        data.mkdir(exist_ok=True)
        shutil.chown(data, "mysql", "mysql")
        log = self.root / "log" / "mariadb.log"
        subprocess.run(
            [
                _which("mariadb-install-db"),
                "--no-defaults",
                "--user=mysql",
                f"--datadir={data}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
            env=self.env,
        )
        proc = self._spawn(
            "mariadbd",
            [
                _which("mariadbd"),
                "--no-defaults",
                "--user=mysql",
                f"--datadir={data}",
                f"--socket={data / 'mysqld.sock'}",
                f"--pid-file={data / 'mysqld.pid'}",
                "--bind-address=127.0.0.1",
                f"--port={self.ports['mysql']}",
                "--skip-grant-tables",
                f"--log-error={log}",
            ],
            log.with_suffix(".out"),
        )
        _wait_port(self.ports["mysql"], proc, "mariadbd", log)

    def start(self, timeout: float = 90) -> LocalSlurm:
        try:
            self._write_configs()
            self._start_munge()
            self._start_mariadb()
            logs = self.root / "log"
            # slurmdbd reads slurmdbd.conf from the directory of $SLURM_CONF.
            p = self._spawn("slurmdbd", [_which("slurmdbd"), "-D"], logs / "slurmdbd.out")
            _wait_port(self.ports["slurmdbd"], p, "slurmdbd", logs / "slurmdbd.log")
            p = self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)], logs / "slurmctld.out")
            _wait_port(self.ports["slurmctld"], p, "slurmctld", logs / "slurmctld.log")
            self._spawn("slurmd", [_which("slurmd"), "-D", "-f", str(self.conf)], logs / "slurmd.out")
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for name, proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.logs()}")
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=self.env).stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"the node did not become idle within {timeout:.0f}s (state {state!r}):\n{self.logs()}")

    def final_states(self, job: str, timeout: float = 60) -> list[str]:
        """The state of every attempt of `job` (`sacct -D`), oldest first, once the last attempt has ended.

        Accounting lags the job: slurmctld tells slurmdbd that a job ended after the job's own processes (and so
        submitit, which reads the job's result file) are done, so one read right after a sweep can still say RUNNING.
        """
        deadline = time.monotonic() + timeout
        while True:
            out = subprocess.run(
                [_which("sacct"), "-n", "-X", "-D", "-P", "-j", job, "-o", "State"], capture_output=True, text=True, env=self.env
            )
            states = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
            if states and states[-1] in ENDED and all(s in ENDED or s == "REQUEUED" for s in states):
                return states
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"sacct still says {states} for job {job} {timeout:.0f}s after it was expected to end "
                    f"(sacct exit {out.returncode}: {out.stderr.strip()}):\n{self.logs()[-3000:]}"
                )
            time.sleep(1)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{_tail(p, 1500)}" for p in sorted((self.root / "log").glob("*")))

    def stop(self) -> None:
        """Cancel this cluster's jobs, then SIGTERM the daemons this object started, newest first."""
        if any(name == "slurmctld" and proc.poll() is None for name, proc in self.procs):
            subprocess.run(["scancel", "--full", "--user", "root"], capture_output=True, env=self.env, timeout=30)
            time.sleep(1)
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        self.procs.clear()

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    with LocalSlurm() as cluster:
        print(f"export SLURM_CONF={cluster.conf}\n(logs under {cluster.root / 'log'}; Ctrl-C stops the cluster)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
