"""Run a command the way panostage.service would run it, as far as that is possible without systemd
as PID 1 (root only).  Each part is built from the unit file itself, so the test follows the unit:

* identity: ``setpriv`` to User=/Group= with no supplementary groups, every capability dropped
  (CapabilityBoundingSet= empty), NoNewPrivileges;
* devices: a cgroup-v1 ``devices`` group allowing exactly DevicePolicy=closed's pseudo devices plus
  DeviceAllow= (classes resolved from /proc/devices, as systemd does), plus any extra (the lab
  drop-in's block-loop);
* system calls: seccomp filters loaded through libseccomp (ctypes), one per setting as systemd does:
  SystemCallFilter= (groups expanded by ``systemd-analyze syscall-filter``, ``~`` lines removed),
  SystemCallErrorNumber=, SystemCallArchitectures=native, MemoryDenyWriteExecute=,
  RestrictAddressFamilies=, RestrictNamespaces= (clone3 answers ENOSYS, as under systemd);
* file system, in a private mount namespace: ProtectSystem=strict (every mount read-only but /dev,
  /proc, /sys's own), ProtectHome=, PrivateTmp=, ProtectProc=invisible + ProcSubset=pid (a new
  procfs with hidepid=invisible,subset=pid), ProtectKernelTunables/ControlGroups (/sys read-only),
  StateDirectory=/RuntimeDirectory=/LogsDirectory= writable at their real paths, and the installed
  tree at its final path (/opt/panostage);
* UMask=;
* environment: what systemd gives a service (STATE_DIRECTORY, RUNTIME_DIRECTORY, NOTIFY_SOCKET,
  WATCHDOG_USEC, INVOCATION_ID, …) and nothing else.

Not emulated: PrivateMounts/PrivateIPC/RemoveIPC/ProtectClock/ProtectHostname/ProtectKernelModules/
ProtectKernelLogs/LockPersonality/RestrictRealtime/RestrictSUIDSGID/IPAddressDeny (each removes
something the daemon never uses), and the cgroup-BPF IP filter.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

DEVICES_CGROUP = Path("/sys/fs/cgroup/devices")

# What DevicePolicy=closed always allows (systemd's cgroup.c), as cgroup-v1 entries.
CLOSED_DEFAULTS = [
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:2 rwm",
    "c 136:* rw",
]

# The seccomp program, run by the installed interpreter right before exec'ing the service.
SECCOMP_LAUNCHER = r"""
import ctypes, json, os, sys
spec = json.loads(sys.argv[1])
argv = sys.argv[2:]
lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]
lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(Cmp)]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
ALLOW = 0x7FFF0000
def ERRNO(n): return 0x00050000 | n
NE, EQ, GE, MASKED_EQ = 1, 4, 5, 7
def nr(name):
    n = lib.seccomp_syscall_resolve_name(name.encode())
    return None if n == -1 else n
def load(default, rules):
    ctx = lib.seccomp_init(default)
    assert ctx, "seccomp_init"
    for action, name, cmps in rules:
        n = nr(name)
        if n is None or n < 0:  # unknown, or a pseudo number: not a system call of this architecture
            continue
        arr = (Cmp * max(1, len(cmps)))(*[Cmp(*c) for c in cmps])
        rc = lib.seccomp_rule_add_array(ctx, action, n, len(cmps), arr)
        if rc < 0:
            sys.exit(f"seccomp_rule_add({name}): {rc}")
    rc = lib.seccomp_load(ctx)
    if rc < 0:
        sys.exit(f"seccomp_load: {rc}")
if spec["mdwe"]:  # MemoryDenyWriteExecute=yes
    PROT_WRITE, PROT_EXEC, SHM_EXEC = 2, 4, 0o100000
    load(ALLOW, [(ERRNO(1), "mmap", [(2, MASKED_EQ, PROT_WRITE | PROT_EXEC, PROT_WRITE | PROT_EXEC)]),
                 (ERRNO(1), "mprotect", [(2, MASKED_EQ, PROT_EXEC, PROT_EXEC)]),
                 (ERRNO(1), "pkey_mprotect", [(2, MASKED_EQ, PROT_EXEC, PROT_EXEC)]),
                 (ERRNO(1), "shmat", [(2, MASKED_EQ, SHM_EXEC, SHM_EXEC)])])
if spec["families"] is not None:  # RestrictAddressFamilies=
    AF_MAX = 46
    rules = [(ERRNO(97), "socket", [(0, EQ, f, 0)]) for f in range(AF_MAX) if f not in spec["families"]]
    rules.append((ERRNO(97), "socket", [(0, GE, AF_MAX, 0)]))
    load(ALLOW, rules)
if spec["namespaces"]:  # RestrictNamespaces=yes
    flags = [0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x00000080]
    load(ALLOW, [(ERRNO(38), "clone3", []), (ERRNO(1), "unshare", []), (ERRNO(1), "setns", [])]
         + [(ERRNO(1), "clone", [(0, MASKED_EQ, f, f)]) for f in flags])
# SystemCallFilter= (an allow list) + SystemCallErrorNumber=, last as systemd does: seccomp() itself is
# not on the list
load(ERRNO(spec["errno"]), [(ALLOW, name, []) for name in spec["allow"]])
os.execv(argv[0], argv)
"""


def unit_settings(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def syscall_groups() -> dict[str, list[str]]:
    text = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = []
        elif line.startswith("    ") and current and not line.strip().startswith("#"):
            groups[current].append(line.strip())
        elif not line.strip() or line.startswith("#"):
            current = None if line.startswith("#") else current
    return groups


def expand(items: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for item in items:
        if item.startswith("@"):
            out |= expand(groups[item], groups)
        else:
            out.add(item)
    return out


def syscall_allow_list(settings: dict[str, list[str]]) -> list[str]:
    """SystemCallFilter= as systemd reads it: the first (allow) list, minus every ``~`` list after it."""
    groups = syscall_groups()
    allowed: set[str] = set()
    first = True
    for value in settings["SystemCallFilter"]:
        deny = value.startswith("~")
        items = value.lstrip("~").split()
        if first:
            assert not deny, "the emulation supports an allow list first"
            allowed = expand(items, groups)
            first = False
        elif deny:
            allowed -= expand(items, groups)
        else:
            allowed |= expand(items, groups)
    # implicitly allowed by systemd
    return sorted(allowed | {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn"})


def address_families(settings: dict[str, list[str]]) -> list[int]:
    import socket

    return sorted(int(getattr(socket, name)) for name in settings["RestrictAddressFamilies"][0].split())


def device_class_majors(kind: str, name: str) -> list[int]:
    """The majors of a DeviceAllow= class (``block-sd``) from /proc/devices, as systemd resolves them."""
    section = "Block devices:" if kind == "block" else "Character devices:"
    majors = []
    inside = False
    for line in Path("/proc/devices").read_text().splitlines():
        if line.endswith(":"):
            inside = line == section
            continue
        parts = line.split()
        if inside and len(parts) == 2 and re.fullmatch(name.replace("*", ".*"), parts[1]):
            majors.append(int(parts[0]))
    return majors


def device_rules(settings: dict[str, list[str]], extra: list[str]) -> list[str]:
    assert settings["DevicePolicy"] == ["closed"]
    rules = list(CLOSED_DEFAULTS)
    for value in settings.get("DeviceAllow", []) + extra:
        spec, access = (value.split() + ["rwm"])[:2]
        kind, name = spec.split("-", 1)
        for major in device_class_majors(kind, name):
            rules.append(f"{kind[0]} {major}:* {access}")
    return rules


@dataclass
class Sandbox:
    unit: Path
    prefix_tree: Path  # the staged /opt/panostage
    state: Path  # host directories bound at the service's own paths
    logs: Path
    uid: int
    gid: int
    extra_devices: list[str] = field(default_factory=list)
    prefix: str = "/opt/panostage"
    token: str = field(default_factory=lambda: secrets.token_hex(4))
    made_dirs: list[Path] = field(default_factory=list)
    cgroup: Path | None = None

    STATE_DIR = Path("/var/lib/panostage")
    RUNTIME_DIR = Path("/run/panostage")
    LOGS_DIR = Path("/var/log/panostage")

    def __post_init__(self) -> None:
        self.settings = unit_settings(self.unit)
        for key, want in (
            ("User", "panostage"),
            ("ProtectSystem", "strict"),
            ("NoNewPrivileges", "yes"),
            ("CapabilityBoundingSet", ""),
            ("ProcSubset", "pid"),
            ("ProtectProc", "invisible"),
        ):
            assert self.settings[key] == [want], (
                f"the sandbox emulates {key}={want}; the unit says {self.settings[key]}"
            )

    def prepare(self) -> None:
        """Mount points at the service's real paths (made on the host if missing, removed afterwards)
        and the devices cgroup."""
        for path in (self.STATE_DIR, self.RUNTIME_DIR, self.LOGS_DIR):
            if not path.exists():
                path.mkdir(mode=0o755)
                self.made_dirs.append(path)
        self.cgroup = DEVICES_CGROUP / f"panostage-sandbox-{self.token}"
        self.cgroup.mkdir()
        (self.cgroup / "devices.deny").write_text("a")
        for rule in device_rules(self.settings, self.extra_devices):
            (self.cgroup / "devices.allow").write_text(rule)

    def cleanup(self) -> None:
        if self.cgroup is not None and self.cgroup.exists():
            try:
                self.cgroup.rmdir()
            except OSError:
                pass
        for path in reversed(self.made_dirs):
            try:
                path.rmdir()
            except OSError:
                pass

    def environment(self, extra: dict[str, str]) -> dict[str, str]:
        return {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "HOME": "/",
            "USER": "panostage",
            "LOGNAME": "panostage",
            "SHELL": "/usr/sbin/nologin",
            "INVOCATION_ID": secrets.token_hex(16),
            "STATE_DIRECTORY": str(self.STATE_DIR),
            "RUNTIME_DIRECTORY": str(self.RUNTIME_DIR),
            "LOGS_DIRECTORY": str(self.LOGS_DIR),
            **extra,
        }

    def seccomp_spec(self) -> dict:
        errno_name = self.settings.get("SystemCallErrorNumber", ["EPERM"])[0]
        import errno as errno_mod

        return {
            "allow": syscall_allow_list(self.settings),
            "errno": getattr(errno_mod, errno_name),
            "mdwe": self.settings.get("MemoryDenyWriteExecute") == ["yes"],
            "families": address_families(self.settings) if "RestrictAddressFamilies" in self.settings else None,
            "namespaces": self.settings.get("RestrictNamespaces") == ["yes"],
        }

    def command(self, argv: list[str], env: dict[str, str]) -> list[str]:
        """The whole chain: unshare (mount namespace) -> sh (mounts, cgroup) -> setpriv -> seccomp -> argv."""
        python = f"{self.prefix}/bin/python"
        env_args = [f"{k}={v}" for k, v in self.environment(env).items()]
        final = [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
            "env",
            "-i",
            *env_args,
            python,
            "-c",
            SECCOMP_LAUNCHER,
            json.dumps(self.seccomp_spec()),
            *argv,
        ]
        rw = [
            str(self.STATE_DIR),
            str(self.RUNTIME_DIR),
            str(self.LOGS_DIR),
            "/tmp",
            "/var/tmp",
            "/dev",
            "/proc",
            "/sys",
        ]
        script = f"""
set -e
echo $$ > {shlex.quote(str(self.cgroup / "cgroup.procs"))}
mount --make-rprivate /
mount -t tmpfs -o mode=0755 tmpfs /opt
mkdir /opt/panostage
mount --bind {shlex.quote(str(self.prefix_tree))} {self.prefix}
mount --bind {shlex.quote(str(self.state))} {self.STATE_DIR}
mount --bind {shlex.quote(str(self.logs))} {self.LOGS_DIR}
mount -t tmpfs -o mode=0700,uid={self.uid},gid={self.gid} tmpfs {self.RUNTIME_DIR}
for d in /home /root /run/user; do [ -d "$d" ] && mount -t tmpfs -o mode=0755 tmpfs "$d"; done
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
mount -t proc -o subset=pid,hidepid=invisible proc /proc
# ProtectSystem=strict: everything read-only but the service's own directories and /dev, /proc, /sys
awk '{{print $5}}' /proc/self/mountinfo | sort -u | while read -r mp; do
    mp=$(printf '%b' "$mp")
    case "$mp" in
        {"|".join(p + "|" + p + "/*" for p in rw)}) continue ;;
    esac
    mount -o remount,bind,ro "$mp" 2>/dev/null || true
done
# ProtectKernelTunables / ProtectControlGroups: /sys read-only (after joining the cgroup above)
mount -o remount,bind,ro /sys 2>/dev/null || true
for mp in $(awk '$5 ~ "^/sys/" {{print $5}}' /proc/self/mountinfo); do mount -o remount,bind,ro "$mp" 2>/dev/null || true; done
umask {self.settings.get("UMask", ["0022"])[0]}
exec {" ".join(shlex.quote(a) for a in final)}
"""
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
