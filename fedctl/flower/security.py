"""Certificates and keys for a secured Flower federation (`fedctl train flower-certs`).

flwr 1.41 secures a deployment in two independent ways, and this module makes the files for both:

- TLS: the SuperLink serves its Fleet, Control and Runtime HTTP APIs over HTTPS with a server
  certificate signed by a CA; SuperNodes, `flwr` and the SuperLink's own SuperExec check it against
  the CA certificate. PEM X.509, checked with `flwr.common.args.try_obtain_server_certificates`.
- SuperNode authentication (`flower-superlink --enable-supernode-auth`): each SuperNode signs its
  requests with its own EC private key; the SuperLink serves only nodes whose public key was
  registered with `flwr supernode register`. The keys must be OpenSSH-encoded keys on a NIST curve
  (flwr/cli/supernode/register.py: `load_ssh_public_key`, NIST EC only; flwr/supernode/cli/
  flower_supernode.py: `load_ssh_private_key`, EC only). We use P-384, flwr's own choice.

Layout of a certs directory (who must hold each file is in certs.json):

    ca.crt                    CA certificate: every host (public)
    superlink/server.crt      the SuperLink's certificate, SANs = the hosts nodes dial (public)
    superlink/server.key      its private key: the SuperLink host only (0600)
    supernode-K/auth.key      SuperNode K's authentication key: node K's host only (0600)
    supernode-K/auth.pub      its public key: registered at the SuperLink (public)
    certs.json                this listing and the flag each file goes to

The CA's private key is never written: nothing else can ever be signed with it. To add a host name
or more nodes, make a new set. This is a test PKI for a lab federation, not a replacement for an
organisation's CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fedctl.errors import FedctlError
from fedctl.utils.io import current_umask, make_parents, os_error

DEFAULT_HOSTS = ("127.0.0.1", "::1", "localhost")
MANIFEST = "certs.json"
CA_CERT = "ca.crt"
SERVER_CERT = "superlink/server.crt"
SERVER_KEY = "superlink/server.key"
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class FlowerCerts:
    """Paths of one certs directory (absolute)."""

    root: Path
    hosts: tuple[str, ...]
    nodes: int

    @property
    def ca_cert(self) -> Path:
        return self.root / CA_CERT

    @property
    def server_cert(self) -> Path:
        return self.root / SERVER_CERT

    @property
    def server_key(self) -> Path:
        return self.root / SERVER_KEY

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    def node_key(self, node: int) -> Path:
        """SuperNode `node`'s private authentication key (OpenSSH, EC P-384)."""
        return self.root / f"supernode-{node}" / "auth.key"

    def node_public_key(self, node: int) -> Path:
        """SuperNode `node`'s public key, the file `flwr supernode register` takes."""
        return self.root / f"supernode-{node}" / "auth.pub"

    def superlink_flags(self, *, auth: bool = True) -> list[str]:
        flags = ["--ssl-ca-certfile", str(self.ca_cert), "--ssl-certfile", str(self.server_cert),
                 "--ssl-keyfile", str(self.server_key)]
        return flags + ["--enable-supernode-auth"] if auth else flags

    def supernode_flags(self, node: int, *, auth: bool = True) -> list[str]:
        flags = ["--root-certificates", str(self.ca_cert)]
        return flags + ["--auth-supernode-private-key", str(self.node_key(node))] if auth else flags


def check_hosts(hosts: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The hosts as given, each an IP address or a DNS name; anything else is a FedctlError."""
    if not hosts:
        raise FedctlError("no --host given for the SuperLink's certificate",
                          "pass the address SuperNodes dial, e.g. --host 10.0.0.5 --host superlink.lab")
    for host in hosts:
        try:
            ipaddress.ip_address(host)
            continue
        except ValueError:
            pass
        name = host[:-1] if host.endswith(".") else host
        if not (0 < len(name) <= 253 and all(_DNS_LABEL.match(label) for label in name.split("."))):
            raise FedctlError(f"--host {host!r} is neither an IP address nor a DNS name",
                              "give the address SuperNodes dial, e.g. --host 10.0.0.5 or --host superlink.lab "
                              "(no port, no scheme)")
    return tuple(dict.fromkeys(hosts))


def _targets(nodes: int) -> list[str]:
    names = [CA_CERT, SERVER_CERT, SERVER_KEY]
    for k in range(nodes):
        names += [f"supernode-{k}/auth.key", f"supernode-{k}/auth.pub"]
    return names + [MANIFEST]


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write `path` whole with `mode`, never replacing anything: link() fails where a file exists,
    where fedctl.utils.io.atomic_path's rename would silently replace it."""
    make_parents(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise os_error(exc, path) from None
    try:
        os.fchmod(fd, mode)  # before any byte is written: a key is never readable by others
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
    except FileExistsError:
        raise _exists(path) from None
    except OSError as exc:
        raise os_error(exc, path) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def _exists(path: Path) -> FedctlError:
    return FedctlError(f"{path} already exists: fedctl never overwrites certificates or keys",
                       "choose another --out (a new folder), or move the old files away yourself")


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificates(hosts: tuple[str, ...], days: int):
    """(CA certificate, server certificate, server key): EC P-384, SHA-384, the extensions strict
    verifiers (Python 3.13's VERIFY_X509_STRICT) require."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)  # 5 min: clock skew
    ca_key, server_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedctl Flower test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA384()))
    names = [x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in hosts]
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
              .issuer_name(ca_name).public_key(server_key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                           data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                           crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.SubjectAlternativeName(names), critical=False)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
              .sign(ca_key, hashes.SHA384()))
    return ca, server, server_key


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _node_key_pair() -> tuple[bytes, bytes]:
    """(private, public) in the OpenSSH encodings flwr 1.41 loads."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + b"\n"


def _manifest(certs: FlowerCerts) -> dict:
    files = [
        {"file": CA_CERT, "holder": "every host: SuperLink, each SuperNode, wherever `flwr` runs", "secret": False,
         "used_by": ["flower-superlink --ssl-ca-certfile", "flower-supernode --root-certificates",
                     "$FLWR_HOME/config.toml: root-certificates = \"<absolute path>\""]},
        {"file": SERVER_CERT, "holder": "SuperLink host", "secret": False,
         "used_by": ["flower-superlink --ssl-certfile"], "hosts": list(certs.hosts)},
        {"file": SERVER_KEY, "holder": "SuperLink host only", "secret": True,
         "used_by": ["flower-superlink --ssl-keyfile"]},
    ]
    for k in range(certs.nodes):
        files += [
            {"file": f"supernode-{k}/auth.key", "holder": f"SuperNode {k}'s host only", "secret": True,
             "used_by": ["flower-supernode --auth-supernode-private-key"]},
            {"file": f"supernode-{k}/auth.pub", "holder": "whoever runs `flwr supernode register`", "secret": False,
             "used_by": ["flwr supernode register <file> <connection>"]},
        ]
    return {"written_by": "fedctl train flower-certs", "flwr": "1.41", "hosts": list(certs.hosts),
            "nodes": certs.nodes, "ca_key": "not kept: nothing else can be signed with this CA", "files": files}


def make_certs(out: str | os.PathLike, nodes: int, hosts: list[str] | tuple[str, ...] = DEFAULT_HOSTS, *,
               days: int = 365) -> FlowerCerts:
    """Write a CA, the SuperLink's TLS certificate for `hosts` (+ 127.0.0.1, ::1, localhost) and `nodes`
    SuperNode key pairs into `out`.

    Nothing is ever overwritten: if any target file exists, a FedctlError names it and nothing is
    written. Private keys are 0600 from their first byte; public files follow the umask. A failure
    part-way removes what this call wrote. `days`: validity of both certificates.
    """
    if nodes < 1:
        raise FedctlError(f"--nodes {nodes}: a federation needs at least one SuperNode",
                          "pass --nodes N with N >= 1, one key pair per SuperNode")
    if days < 1:
        raise FedctlError(f"certificate validity of {days} days", "use at least 1 day")
    # The SuperLink's own SuperExec dials 127.0.0.1 when the SuperLink binds 0.0.0.0 (flwr/supercore/address.py
    # resolve_bind_address) and checks the certificate too: the loopback names are always in it.
    hosts = check_hosts([*check_hosts(hosts), *DEFAULT_HOSTS])
    root = Path(out).expanduser().absolute()
    if os.path.lexists(root) and not root.is_dir():
        raise FedctlError(f"--out {root} is a file, not a folder", "choose a folder for the certificates")
    for name in _targets(nodes):
        if os.path.lexists(root / name):
            raise _exists(root / name)
    certs = FlowerCerts(root, hosts, nodes)
    from cryptography.hazmat.primitives import serialization

    ca, server, server_key = _certificates(hosts, days)
    public = 0o644 & ~current_umask()
    files = [(certs.ca_cert, ca.public_bytes(serialization.Encoding.PEM), public),
             (certs.server_cert, server.public_bytes(serialization.Encoding.PEM), public),
             (certs.server_key, _pem_key(server_key), 0o600)]
    for k in range(nodes):
        private, public_key = _node_key_pair()
        files += [(certs.node_key(k), private, 0o600), (certs.node_public_key(k), public_key, public)]
    files.append((certs.manifest, (json.dumps(_manifest(certs), indent=2) + "\n").encode(), public))
    written: list[Path] = []
    try:
        for path, data, mode in files:
            _write_new(path, data, mode)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return certs


def load_certs(path: str | os.PathLike, nodes: int | None = None) -> FlowerCerts:
    """The certs directory at `path` (written by make_certs); with `nodes`, it must hold that many keys.
    Only ca.crt and the public keys must be present here: the private keys may live on their hosts."""
    root = Path(path).expanduser().absolute()
    manifest = root / MANIFEST
    try:
        info = json.loads(manifest.read_text())
        certs = FlowerCerts(root, tuple(info["hosts"]), int(info["nodes"]))
    except FileNotFoundError:
        raise FedctlError(f"{manifest} not found: {root} is not a certs directory",
                          "make one with `fedctl train flower-certs --out DIR --nodes N`") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FedctlError(f"{manifest} is unreadable ({type(exc).__name__})",
                          "make a new set with `fedctl train flower-certs --out DIR --nodes N`") from None
    if nodes is not None and certs.nodes < nodes:
        raise FedctlError(f"{root} holds keys for {certs.nodes} SuperNodes, {nodes} needed",
                          f"make a new set with `fedctl train flower-certs --out DIR --nodes {nodes}`")
    # only the public files: private keys may (should) already sit on their own hosts
    needed = [certs.ca_cert] + [certs.node_public_key(k) for k in range(nodes if nodes is not None else certs.nodes)]
    for file in needed:
        if not file.is_file():
            raise FedctlError(f"{file} is missing from the certs directory",
                              "make a new set with `fedctl train flower-certs --out DIR --nodes N`")
    return certs


def _q(path: Path | str) -> str:
    return shlex.quote(str(path))


def host_port(host: str, port: int) -> str:
    """`host:port` as flwr's --superlink takes it (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def deployment_commands(certs: FlowerCerts, *, superlink: str, port: int, node_configs: list[str],
                        connection: str, flwr_home: str | os.PathLike | None = None,
                        supernode_port: int | None = None) -> list[str]:
    """Shell lines for a TLS + node-authenticated deployment: the SuperLink, one `flwr supernode register`
    per node, one SuperNode per node (node k on `supernode_port + k` when given, else flwr's default port
    on its own host). `superlink`: the host SuperNodes dial, one of the certificate's SANs."""
    env = f"FLWR_HOME={_q(flwr_home)} " if flwr_home is not None else ""
    lines = [" ".join(["flower-superlink", *map(_q, certs.superlink_flags()), "--port", str(port),
                       "--disable-runtime-dependency-installation"])]
    lines += [f"{env}flwr supernode register {_q(certs.node_public_key(k))} {connection}"
              for k in range(len(node_configs))]
    for k, node_config in enumerate(node_configs):
        node_port = [] if supernode_port is None else ["--port", str(supernode_port + k)]
        lines.append(" ".join(["flower-supernode", *map(_q, certs.supernode_flags(k)), "--superlink",
                               host_port(superlink, port), *node_port, "--node-config", _q(node_config)]))
    return lines


def connection_toml(connection: str, address: str, ca_cert: Path | None) -> str:
    """A `[superlink.<connection>]` section for $FLWR_HOME/config.toml: TLS against `ca_cert` (flwr 1.41
    wants an absolute path, flwr/cli/typing.py), or `insecure = true` when `ca_cert` is None."""
    # a JSON string is a valid TOML basic string: quotes and backslashes in paths stay intact
    security = "insecure = true" if ca_cert is None else f"root-certificates = {json.dumps(str(Path(ca_cert).absolute()))}"
    return f"[superlink.{connection}]\naddress = {json.dumps(address)}\n{security}\n"
