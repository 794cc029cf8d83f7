"""Network namespaces joined to the root namespace by veth links, for hosts on one machine.

Each host is a namespace `igw-<run>-<name>` with one veth link: `10.<net>.<n>.1/24` on the
root side (where the test's proxies and nginx listen or connect), `10.<net>.<n>.2/24` inside
(where the host's server listens). The hosts have no route anywhere else: the root side's
address is their only peer. `<net>` is picked per run from the private block, unused by any
address of this machine, so two runs never share a subnet.

Everything is named after the run, so `leftovers()` finds what any run left behind, and
`Network.remove()` removes what this run made, whatever state it is in. Needs root.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "igw-"
LINK_PREFIX = "igw"


class NetnsUnavailable(RuntimeError):
    """Network namespaces can't be made here (not root, or no `ip`)."""


def ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def namespaces() -> list[str]:
    """Every network namespace of this machine, by name."""
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def pids_in(namespace: str) -> list[int]:
    return [int(pid) for pid in ip("netns", "pids", namespace, check=False).split()]


def links() -> list[str]:
    """The names of this machine's links in the root namespace."""
    return re.findall(r"^\d+: ([^:@]+)", ip("-o", "link", "show"), flags=re.MULTILINE)


def leftovers(run: str | None = None) -> dict[str, list[str]]:
    """What runs of the harness (or the one named `run`) left: namespaces, links, processes."""
    ns_prefix = f"{PREFIX}{run}-" if run else PREFIX
    link_prefix = f"{LINK_PREFIX}{run}" if run else LINK_PREFIX
    found_ns = [name for name in namespaces() if name.startswith(ns_prefix)]
    inside = [pid for name in found_ns for pid in pids_in(name)]
    return {
        "namespaces": found_ns,
        "links": [name for name in links() if name.startswith(link_prefix)],
        "processes": [str(pid) for pid in inside + tagged_processes(ns_prefix)],
    }


def tagged_processes(prefix: str) -> list[int]:
    """Live processes of the root namespace tagged with a run's namespace prefix in their
    command line: its nginx (its files are under `nginx-<prefix>`), its socat links (named
    `socat-<prefix>link`)."""
    tags = [f"nginx-{prefix}".encode(), f"socat-{prefix}".encode()]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            state = (entry / "status").read_text()
        except OSError:
            continue  # gone meanwhile
        if any(tag in command for tag in tags) and "\nState:\tZ" not in state:
            found.append(int(entry.name))
    return found


def _free_net() -> int:
    used = {int(m) for m in re.findall(r"inet 10\.(\d+)\.", ip("-o", "-4", "addr", "show"))}
    for net in range(213, 250):
        if net not in used:
            return net
    raise RuntimeError("no free 10.x.0.0/16 block for the test network")


@dataclass
class Host:
    """One namespace and its link: the host is at `address`, the root side at `gateway`."""

    name: str
    namespace: str
    link: str
    address: str
    gateway: str

    def command(self, *argv: str) -> list[str]:
        """`argv` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def kill_all(self) -> int:
        """SIGKILL every process in the namespace; how many there were."""
        pids = pids_in(self.namespace)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)


@dataclass
class Network:
    """The hosts of one run. Use as a context manager: removed on the way out, always."""

    run: str = field(default_factory=lambda: uuid.uuid4().hex[:4])
    net: int = 0
    hosts: dict[str, Host] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if os.geteuid() != 0:
            raise NetnsUnavailable("network namespaces need root (CI runs as root)")
        if not Path("/usr/sbin/ip").exists() and not Path("/sbin/ip").exists():
            raise NetnsUnavailable("iproute2's `ip` is missing")
        self.net = _free_net()

    @property
    def namespace_prefix(self) -> str:
        """What the names of this run's namespaces (and its nginx's directory) begin with."""
        return f"{PREFIX}{self.run}-"

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *_: object) -> None:
        self.remove()

    def add(self, name: str) -> Host:
        """A new host: its namespace, its veth link, addresses, loopback up."""
        number = len(self.hosts) + 1
        namespace = f"{self.namespace_prefix}{name}"
        link = f"{LINK_PREFIX}{self.run}{name}"[:13]
        host = Host(
            name=name,
            namespace=namespace,
            link=link,
            address=f"10.{self.net}.{number}.2",
            gateway=f"10.{self.net}.{number}.1",
        )
        self.hosts[name] = host  # before it exists: a failure half-way is removed too
        ip("netns", "add", namespace)
        ip("link", "add", link, "type", "veth", "peer", "name", f"{link}n")
        ip("link", "set", f"{link}n", "netns", namespace)
        ip("addr", "add", f"{host.gateway}/24", "dev", link)
        ip("link", "set", link, "up")
        ip("-n", namespace, "addr", "add", f"{host.address}/24", "dev", f"{link}n")
        ip("-n", namespace, "link", "set", f"{link}n", "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        return host

    def remove(self) -> None:
        """Kill every process in the run's namespaces, then delete them and their links."""
        for host in self.hosts.values():
            if host.namespace and host.namespace in namespaces():
                deadline = time.monotonic() + 10
                while host.kill_all() and time.monotonic() < deadline:
                    time.sleep(0.05)
                ip("netns", "delete", host.namespace, check=False)
            if host.link in links():  # gone with its peer's namespace, normally
                ip("link", "delete", host.link, check=False)
        self.hosts.clear()


def remove_leftovers() -> dict[str, list[str]]:
    """Remove what any run left behind (a run killed before it could clean up); what it was."""
    found = leftovers()
    network = Network(run="")
    for namespace in found["namespaces"]:
        run, name = namespace.removeprefix(PREFIX).split("-", 1)
        network.hosts[namespace] = Host(name, namespace, f"{LINK_PREFIX}{run}{name}"[:13], "", "")
    for link in found["links"]:
        if not any(host.link == link for host in network.hosts.values()):
            network.hosts[link] = Host(link, "", link, "", "")
    network.remove()
    for pid in tagged_processes(PREFIX):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return found
