"""A memory cgroup per run: the bound on a program's memory summed over all its processes.

RLIMIT_AS bounds each process; a program that forks 100 children of 3 GiB each stays under it. A
cgroup's limit counts every page the run's processes touch, their tmpfs files included (shmem is
charged to the cgroup that writes it), and the kernel's OOM killer ends the run at the limit.

Where: a child of the harness's own cgroup (so every limit above it still applies), created per run
and removed after it.
  - cgroup v2 (`0::/path` in /proc/self/cgroup): `memory.max` (and `memory.swap.max` 0), when the
    memory controller is enabled in the harness cgroup's `cgroup.subtree_control` (systemd delegation,
    a container's own cgroup); we do not move the harness to enable it.
  - cgroup v1 (a `memory` hierarchy): `memory.limit_in_bytes` and `memory.memsw.limit_in_bytes`.
Creating cgroups and moving a process into one needs write access to them (root, or a delegated
subtree). Where neither works, `find_memory_cgroup()` says why and the sandbox reports that only the
per-process limit holds (`Sandbox.memory_bound`, the self-check's line on stderr, the limits in results).

The run's first process (a /bin/sh that waits on a pipe) is moved into the cgroup by the harness
before it execs bwrap, so no process of the run ever starts outside it.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import time
from dataclasses import dataclass

_PREFIX = "xverse-sandbox-"
_counter = itertools.count()


@dataclass(frozen=True)
class MemoryCgroups:
    """Where this process can create memory cgroups: `parent` dir, `version` 1 or 2."""

    parent: str
    version: int

    def create(self, limit_bytes: int) -> "RunCgroup":
        """A fresh cgroup under `parent` limited to `limit_bytes` (memory and swap). Raises OSError."""
        self.sweep()
        path = os.path.join(self.parent, f"{_PREFIX}{os.getpid()}-{next(_counter)}")
        os.mkdir(path)
        try:
            if self.version == 2:
                _write(path, "memory.max", limit_bytes)
                if os.path.exists(os.path.join(path, "memory.swap.max")):
                    _write(path, "memory.swap.max", 0)
            else:
                _write(path, "memory.limit_in_bytes", limit_bytes)
                if os.path.exists(os.path.join(path, "memory.memsw.limit_in_bytes")):
                    _write(path, "memory.memsw.limit_in_bytes", limit_bytes)  # no escape into swap
        except BaseException:
            os.rmdir(path)
            raise
        return RunCgroup(path, self.version)

    def sweep(self) -> None:
        """Remove the cgroups of harness processes that died without removing them (a killed harness)."""
        with contextlib.suppress(OSError):
            for name in os.listdir(self.parent):
                pid = name[len(_PREFIX):].split("-")[0]
                if name.startswith(_PREFIX) and pid.isdigit() and not _alive(int(pid)):
                    with contextlib.suppress(OSError):  # still busy: its processes are being killed
                        os.rmdir(os.path.join(self.parent, name))

    def describe(self, limit_bytes: int) -> str:
        knob = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
        return f"cgroup v{self.version} {knob} {limit_bytes >> 20} MiB for all processes of a run"


@dataclass(frozen=True)
class RunCgroup:
    path: str
    version: int

    def add(self, pid: int) -> None:
        _write(self.path, "cgroup.procs", pid)

    def oom_kills(self) -> int:
        """How many processes the OOM killer ended in this cgroup (0 if the kernel does not say)."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            with open(os.path.join(self.path, name)) as fh:
                for line in fh:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def remove(self, patience: float = 5.0) -> None:
        """rmdir once its processes are gone (they are being killed); give up silently after `patience`."""
        give_up = time.monotonic() + patience
        while True:
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > give_up:  # the next create() sweeps it
                    return
                time.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _write(folder: str, name: str, value: int) -> None:
    with open(os.path.join(folder, name), "w") as fh:
        fh.write(f"{value}\n")


def find_memory_cgroup(root: str = "/sys/fs/cgroup") -> tuple[MemoryCgroups | None, str]:
    """(where to create run cgroups, "") or (None, why not), for this process."""
    try:
        with open("/proc/self/cgroup") as fh:
            lines = [line.rstrip("\n").split(":", 2) for line in fh]
    except OSError as exc:
        return None, f"cannot read /proc/self/cgroup ({exc.strerror})"
    mounts = _cgroup_mounts()
    v1 = next((path for _, controllers, path in lines if "memory" in controllers.split(",")), None)
    if v1 is not None and "memory" in mounts:
        return _usable(mounts["memory"] + v1.rstrip("/"), 1)
    v2 = next((path for hid, controllers, path in lines if hid == "0" and controllers == ""), None)
    if v2 is not None and "cgroup2" in mounts:
        parent = mounts["cgroup2"] + v2.rstrip("/")
        try:
            with open(os.path.join(parent, "cgroup.subtree_control")) as fh:
                enabled = fh.read().split()
        except OSError as exc:
            return None, f"cgroup v2 {parent}: {exc.strerror}"
        if "memory" not in enabled:
            return None, f"cgroup v2: the memory controller is not delegated to {parent} (cgroup.subtree_control)"
        return _usable(parent, 2)
    return None, "no memory cgroup hierarchy is mounted"


def _usable(parent: str, version: int) -> tuple[MemoryCgroups | None, str]:
    if not os.access(parent, os.W_OK):
        return None, f"cgroup v{version} {parent} is not writable by uid {os.geteuid()}"
    return MemoryCgroups(parent, version), ""


def _cgroup_mounts() -> dict[str, str]:
    """{"memory": v1 mount of the memory controller, "cgroup2": the unified mount}, from mountinfo."""
    found: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            sep = fields.index("-")
            point, fstype, options = fields[4], fields[sep + 1], fields[sep + 3]
            if fstype == "cgroup2":
                found.setdefault("cgroup2", point)
            elif fstype == "cgroup" and "memory" in options.split(","):
                found.setdefault("memory", point)
    return found
