"""Real Redis deployments for the shared-tier tests: TLS with ACL users, Sentinel, Cluster.

Each is made of Debian's ``redis-server`` processes on loopback ports, with every file (configs,
certificates from a throwaway CA, cluster state) in a directory the caller gives (pytest's private
temporary directory). ``stop()`` ends every process it started, and only those.
"""
from __future__ import annotations

import datetime
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis as redis_lib
from redis.cluster import ClusterNode, RedisCluster

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
ADMIN_PASSWORD = "admin-pw-0123456789"
GATEWAY_USER, GATEWAY_PASSWORD = "gateway", "gateway-pw-0123456789"
DATA_PASSWORD, SENTINEL_PASSWORD = "data-pw-0123456789", "sentinel-pw-0123456789"
MASTER = "zgmaster"
# The default user off; an admin for the fixtures; the gateway's user on its own keys, with the
# commands the docs list (CLUSTER SLOTS/SHARDS, READONLY and ASKING only matter on a cluster).
ACL_LINES = ["user default off", f"user admin on >{ADMIN_PASSWORD} ~* &* +@all",
             f"user {GATEWAY_USER} on >{GATEWAY_PASSWORD} ~zg:* resetchannels -@all +@read +@write +@scripting "
             "+@connection -@dangerous +info +cluster|slots +cluster|shards +readonly +asking"]


def free_ports(count: int) -> list[int]:
    """Ports free on loopback, each with port + 10000 free as well (a cluster node's bus)."""
    found: list[int] = []
    while len(found) < count:
        port = random.randint(20000, 29999)
        if port in found:
            continue
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        found.append(port)
    return found


def wait_until(check, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis_lib.RedisError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def tls_supported() -> bool:
    """Whether this redis-server was built with TLS (Debian's is)."""
    out = subprocess.run([REDIS_SERVER, "--tls-port", "1", "--port", "0", "--test-memory", "0"],
                         capture_output=True, text=True, timeout=10)
    return "not supported" not in (out.stdout + out.stderr).lower()


class Processes:
    """redis-server processes started from config files in ``workdir``."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.procs: dict[int, subprocess.Popen] = {}
        self.configs: dict[int, Path] = {}

    def start(self, port: int, lines: list[str], *, sentinel: bool = False) -> None:
        node_dir = self.workdir / str(port)
        node_dir.mkdir(mode=0o700, exist_ok=True)
        conf = self.configs.get(port)
        if conf is None:  # a restart keeps the file (a Sentinel or cluster node rewrites it)
            conf = self.configs[port] = node_dir / "redis.conf"
            conf.write_text("\n".join([f"port {port}", "bind 127.0.0.1", f'dir "{node_dir}"', 'save ""',
                                       "appendonly no", "loglevel warning", f'logfile "{node_dir}/log"',
                                       *lines]) + "\n")
            conf.chmod(0o600)
        args = [REDIS_SERVER, str(conf)] + (["--sentinel"] if sentinel else [])
        self.procs[port] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self, port: int) -> None:
        proc = self.procs.get(port)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for port in list(self.procs):
            self.stop(port)


# ---------------------------------------------------------------------------- TLS
def make_certificates(directory: Path) -> dict[str, str]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files;
    also a second CA that signed nothing here (a wrong GATEWAY_REDIS_CA_FILE)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    paths = {}

    def write(name: str, data: bytes) -> str:
        path = directory / name
        path.write_bytes(data)
        path.chmod(0o600)
        return str(path)

    def key_pem(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def certificate(subject: str, key, issuer_name, issuer_key, *, ca: bool, san=None):
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    for label in ("ca", "wrong-ca"):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test {label}")])
        ca_cert = certificate(f"test {label}", ca_key, ca_name, ca_key, ca=True)
        paths[label] = write(f"{label}.pem", ca_cert.public_bytes(serialization.Encoding.PEM))
        if label == "ca":
            for who, san in (("server", [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                         x509.DNSName("localhost")]), ("client", None)):
                key = ec.generate_private_key(ec.SECP256R1())
                cert = certificate(who, key, ca_name, ca_key, ca=False, san=san)
                paths[who + "-cert"] = write(f"{who}.pem", cert.public_bytes(serialization.Encoding.PEM))
                paths[who + "-key"] = write(f"{who}.key", key_pem(key))
    return paths


class TlsRedis:
    """One redis-server on TLS only, which asks for client certificates; the default user is off,
    an admin user and the gateway's ACL user (keys zg:* only) are on."""

    def __init__(self, workdir: Path):
        self.processes = Processes(workdir)
        self.certs = make_certificates(workdir)
        [self.port] = free_ports(1)
        self.url = f"rediss://127.0.0.1:{self.port}/0"
        self.settings = {"GATEWAY_REDIS_USERNAME": GATEWAY_USER, "GATEWAY_REDIS_PASSWORD": GATEWAY_PASSWORD,
                         "GATEWAY_REDIS_CA_FILE": self.certs["ca"], "GATEWAY_REDIS_CERT_FILE": self.certs["client-cert"],
                         "GATEWAY_REDIS_KEY_FILE": self.certs["client-key"]}

    def start(self) -> None:
        # Start on port 0 then tls-port: redis-server refuses plain connections altogether.
        self.processes.start(self.port, [
            "port 0", f"tls-port {self.port}", f"tls-cert-file {self.certs['server-cert']}",
            f"tls-key-file {self.certs['server-key']}", f"tls-ca-cert-file {self.certs['ca']}",
            "tls-auth-clients yes", *ACL_LINES])
        wait_until(lambda: self.admin().ping(), "the TLS redis-server")

    def admin(self):
        return redis_lib.Redis(host="127.0.0.1", port=self.port, ssl=True, ssl_ca_certs=self.certs["ca"],
                               ssl_certfile=self.certs["client-cert"], ssl_keyfile=self.certs["client-key"],
                               username="admin", password=ADMIN_PASSWORD, socket_timeout=5)

    def flush(self) -> None:
        self.admin().flushall()

    def stop(self) -> None:
        self.processes.stop_all()


# ----------------------------------------------------------------------- Sentinel
class SentinelSet:
    """A primary, a replica and three Sentinels; data and Sentinels have different passwords."""

    def __init__(self, workdir: Path):
        self.processes = Processes(workdir)
        self.primary, self.replica, *self.sentinels = free_ports(5)
        self.url = f"redis+sentinel://{','.join(f'127.0.0.1:{p}' for p in self.sentinels)}/{MASTER}/0"
        self.settings = {"GATEWAY_REDIS_PASSWORD": DATA_PASSWORD, "GATEWAY_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD}

    def start(self) -> None:
        auth = [f"requirepass {DATA_PASSWORD}", f"masterauth {DATA_PASSWORD}"]
        self.processes.start(self.primary, auth)
        self.processes.start(self.replica, auth + [f"replicaof 127.0.0.1 {self.primary}"])
        for port in self.sentinels:
            self.processes.start(port, [
                f"sentinel monitor {MASTER} 127.0.0.1 {self.primary} 2",
                f"sentinel auth-pass {MASTER} {DATA_PASSWORD}",
                f"sentinel down-after-milliseconds {MASTER} 1000",
                f"sentinel failover-timeout {MASTER} 5000",
                f"requirepass {SENTINEL_PASSWORD}", f"sentinel sentinel-pass {SENTINEL_PASSWORD}"], sentinel=True)

        def ready():
            for port in self.sentinels:
                state = self.sentinel(port).sentinel_master(MASTER)
                if state["num-other-sentinels"] < 2 or state["num-slaves"] < 1:
                    return False
            return self.data(self.replica).info("replication")["master_link_status"] == "up"

        wait_until(ready, "three Sentinels that see the primary, its replica and each other", timeout=30)

    def sentinel(self, port: int):
        return redis_lib.Redis(host="127.0.0.1", port=port, password=SENTINEL_PASSWORD, socket_timeout=5,
                               decode_responses=True)

    def data(self, port: int):
        return redis_lib.Redis(host="127.0.0.1", port=port, password=DATA_PASSWORD, socket_timeout=5,
                               decode_responses=True)

    def master_port(self) -> int:
        return int(self.sentinel(self.sentinels[0]).sentinel_get_master_addr_by_name(MASTER)[1])

    def admin(self):
        return self.data(self.master_port())

    def flush(self) -> None:
        self.admin().flushall()
        self.admin().wait(1, 5000)

    def failover(self) -> int:
        """``SENTINEL FAILOVER``; the new primary's port once every Sentinel names it and the old
        primary has been made its replica."""
        old = self.master_port()
        self.sentinel(self.sentinels[0]).execute_command("SENTINEL", "FAILOVER", MASTER)
        wait_until(lambda: all(int(self.sentinel(p).sentinel_get_master_addr_by_name(MASTER)[1]) != old
                               for p in self.sentinels), "the Sentinels to name the new primary")
        new = self.master_port()
        wait_until(lambda: self.data(old).info("replication")["role"] == "slave",
                   "the old primary to be told to follow the new one")
        return new

    def stop(self) -> None:
        self.processes.stop_all()


# ------------------------------------------------------------------------ Cluster
class Cluster:
    """Three masters (no replicas), slots spread by ``redis-cli --cluster create``."""

    def __init__(self, workdir: Path):
        self.processes = Processes(workdir)
        self.ports = free_ports(3)
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)
        self.settings: dict[str, str] = {}

    def _node_lines(self) -> list[str]:
        return ["cluster-enabled yes", "cluster-config-file nodes.conf", "cluster-node-timeout 2000",
                "cluster-require-full-coverage no"]

    def start(self) -> None:
        for port in self.ports:
            self.processes.start(port, [line.replace("{port}", str(port)) for line in self._node_lines()])
        for port in self.ports:
            wait_until(lambda port=port: self.node(port).ping(), f"cluster node {port}")
        subprocess.run([REDIS_CLI, *self._cli_flags(), "--cluster", "create",
                        *[f"127.0.0.1:{p}" for p in self.ports], "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        self.wait_ok()

    def wait_ok(self) -> None:
        wait_until(lambda: all(self.node(p).cluster("info")["cluster_state"] == "ok" for p in self.ports),
                   "cluster_state:ok on every node", timeout=30)

    def _cli_flags(self) -> list[str]:
        return []

    def node(self, port: int):
        return redis_lib.Redis(host="127.0.0.1", port=port, socket_timeout=5, decode_responses=True)

    def admin(self):
        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in self.ports], socket_timeout=5)

    def flush(self) -> None:
        for port in self.ports:
            self.node(port).flushall()

    def restart(self, port: int, down_for: float = 1.0) -> None:
        """Stop one master and start it again from its own nodes.conf (its data is gone)."""
        self.processes.stop(port)
        time.sleep(down_for)
        self.processes.start(port, [line.replace("{port}", str(port)) for line in self._node_lines()])
        self.wait_ok()

    def stop(self) -> None:
        self.processes.stop_all()


class TlsCluster(Cluster):
    """Three masters on TLS only (their bus too), with the default user off and the gateway's ACL
    user, as ElastiCache runs cluster mode with in-transit encryption and RBAC."""

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        self.certs = make_certificates(workdir)
        self.url = "rediss+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)
        self.settings = {"GATEWAY_REDIS_USERNAME": GATEWAY_USER, "GATEWAY_REDIS_PASSWORD": GATEWAY_PASSWORD,
                         "GATEWAY_REDIS_CA_FILE": self.certs["ca"]}

    def _node_lines(self) -> list[str]:
        return super()._node_lines() + [
            "port 0", "tls-port {port}", "tls-cluster yes", f"tls-cert-file {self.certs['server-cert']}",
            f"tls-key-file {self.certs['server-key']}", f"tls-ca-cert-file {self.certs['ca']}",
            "tls-auth-clients no", "masteruser admin", f"masterauth {ADMIN_PASSWORD}", *ACL_LINES]

    def _cli_flags(self) -> list[str]:
        return ["--tls", "--cacert", self.certs["ca"], "--user", "admin", "--pass", ADMIN_PASSWORD]

    def node(self, port: int):
        return redis_lib.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=self.certs["ca"],
                               username="admin", password=ADMIN_PASSWORD, socket_timeout=5, decode_responses=True)

    def admin(self):
        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in self.ports], ssl=True,
                            ssl_ca_certs=self.certs["ca"], username="admin", password=ADMIN_PASSWORD, socket_timeout=5)
