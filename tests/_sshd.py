"""A real OpenSSH server on 127.0.0.1 for the SSH-device tests and the loopback sweep.

Starts `/usr/sbin/sshd -D -f CONFIG` on a free port with a fresh host key and a fresh user key in a
temporary folder; root may log in with that key only (this config, this sandbox). The caller gets the
URI, the identity file and a known_hosts path (empty: the host is unknown until trusted or added).
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Sshd:
    uri: str
    port: int
    identity: Path
    known_hosts: Path
    host_pub: Path
    proc: subprocess.Popen
    root: Path

    def trusted_known_hosts(self) -> Path:
        """A known_hosts file that holds this server's real host key."""
        p = self.root / "known_hosts.trusted"
        key = self.host_pub.read_text().split()
        p.write_text(f"[127.0.0.1]:{self.port} {key[0]} {key[1]}\n")
        return p

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def sshd_missing() -> str | None:
    for exe in ("/usr/sbin/sshd", shutil.which("ssh"), shutil.which("ssh-keygen")):
        if not exe or not os.path.exists(exe):
            return "OpenSSH server/client not installed (scripts/system-deps.sh openssh-server openssh-client)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sshd(root: Path) -> Sshd:
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    hk, uk = root / "host_ed25519", root / "user_ed25519"
    for k in (hk, uk):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k)], check=True)
    auth = root / "authorized_keys"
    shutil.copy(uk.with_suffix(".pub"), auth)
    os.chmod(auth, 0o600)
    user = getpass.getuser()
    port = _free_port()
    cfg = root / "sshd_config"
    cfg.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {auth}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
        f"AllowUsers {user}\nMaxSessions 50\nMaxStartups 50\nSubsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation dir Debian's sshd insists on
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=open(root / "sshd.log", "wb"))
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None:
            raise RuntimeError("sshd exited: " + (root / "sshd.log").read_text()[-500:])
        time.sleep(0.05)
    kh = root / "known_hosts"
    kh.write_text("")
    return Sshd(f"ssh://{user}@127.0.0.1:{port}", port, uk, kh, hk.with_suffix(".pub"), proc, root)
