"""A secured Flower deployment: the PKI fedctl makes, and real flwr 1.41 processes on 127.0.0.1 using it.

Unit tests check the certificates and keys (chain, SANs, formats flwr loads, modes, no overwriting) and the
CLI's errors. The loopback tests start flower-superlink / flower-supernode / flwr with LoopbackFederation
and assert what a user observes: training over TLS with node authentication equals the in-process run bit
for bit; an unregistered node, a node without a key and a node that does not trust the CA are refused
(exit 1 within a bounded time, the refusal in their log, absent from `flwr supernode list`); an unreachable
SuperLink is a bounded error. Every process started is stopped, and none survives (checked with psutil).
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time

import psutil
import pytest
from typer.testing import CliRunner

from fedctl.errors import FedctlError
from fedctl.flower.loopback import MARKER, LoopbackFederation
from fedctl.flower.security import load_certs, make_certs

# the tiny Mamba run of scripts/flower_deploy_check.py
TINY = ["task.demo_sentences=400", "task.seq_len=32", "task.vocab_size=300", "task.local_updates=2",
        "task.eval_batches=2"]


def _cli(*args: str):
    from fedctl.cli.app import app

    return CliRunner().invoke(app, list(args))


def _assert_nothing_survives(fed: LoopbackFederation) -> None:
    assert fed.survivors() == []
    ours = {s.pid for s in fed.services}
    assert not [p for p in psutil.Process().children(recursive=True) if p.pid in ours and p.is_running()
                and p.status() != psutil.STATUS_ZOMBIE]
    assert all(s.popen.poll() is not None for s in fed.services)


# ---- the PKI ------------------------------------------------------------------------------------------------


def test_chain_verifies_with_sans_for_every_host(tmp_path):
    from cryptography import x509
    from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store

    certs = make_certs(tmp_path / "certs", 2, ["superlink.lab", "10.0.0.5"])
    assert certs.hosts == ("superlink.lab", "10.0.0.5", "127.0.0.1", "::1", "localhost")  # loopback: always in
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # the CA signed it
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    import ipaddress

    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(h) for h in ("10.0.0.5", "127.0.0.1", "::1")]
    assert san.get_values_for_type(x509.DNSName) == ["superlink.lab", "localhost"]
    # a full web-PKI path validation (what TLS clients do) for each name a node may dial
    verifier = PolicyBuilder().store(Store([ca]))
    for name in (IPAddress(ipaddress.ip_address("10.0.0.5")), IPAddress(ipaddress.ip_address("127.0.0.1")),
                 IPAddress(ipaddress.ip_address("::1")), DNSName("localhost"), DNSName("superlink.lab")):
        chain = verifier.build_server_verifier(name).verify(server, [])
        assert chain[-1] == ca
    from cryptography.x509.verification import VerificationError

    with pytest.raises(VerificationError):
        verifier.build_server_verifier(DNSName("elsewhere.lab")).verify(server, [])
    other = make_certs(tmp_path / "other", 1)
    with pytest.raises(VerificationError):  # another CA does not vouch for it
        PolicyBuilder().store(Store([x509.load_pem_x509_certificate(other.ca_cert.read_bytes())])) \
            .build_server_verifier(DNSName("localhost")).verify(server, [])


def test_node_keys_are_what_flwr_loads_and_private_files_are_0600(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    certs = make_certs(tmp_path / "certs", 3)
    for k in range(3):
        # flower-supernode --auth-supernode-private-key loads it with load_ssh_private_key (EC only)
        private = load_ssh_private_key(certs.node_key(k).read_bytes(), None)
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        # `flwr supernode register` accepts the public file, and it is this node's key
        assert try_load_public_key(certs.node_public_key(k)) == public_key_to_bytes(private.public_key())
        assert stat.S_IMODE(os.stat(certs.node_key(k)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(certs.server_key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(certs.ca_cert).st_mode) & 0o044 == 0o044  # public files stay readable
    assert not list((tmp_path / "certs").rglob("*.tmp")) and not list((tmp_path / "certs").rglob(".*"))
    manifest = json.loads(certs.manifest.read_text())
    assert manifest["nodes"] == 3 and manifest["hosts"] == ["127.0.0.1", "::1", "localhost"]
    secret = {f["file"] for f in manifest["files"] if f["secret"]}
    assert secret == {"superlink/server.key", "supernode-0/auth.key", "supernode-1/auth.key", "supernode-2/auth.key"}
    assert load_certs(certs.root, 3) == certs
    with pytest.raises(FedctlError, match="holds keys for 3 SuperNodes, 4 needed"):
        load_certs(certs.root, 4)


def test_existing_files_are_never_overwritten(tmp_path):
    certs = make_certs(tmp_path / "certs", 1)
    before = {p: p.read_bytes() for p in certs.root.rglob("*") if p.is_file()}
    with pytest.raises(FedctlError, match=r"ca\.crt already exists: fedctl never overwrites"):
        make_certs(tmp_path / "certs", 1)
    assert {p: p.read_bytes() for p in certs.root.rglob("*") if p.is_file()} == before
    # one file of the user's in the way: named, kept, and nothing else written
    mine = tmp_path / "fresh" / "supernode-1" / "auth.key"
    mine.parent.mkdir(parents=True)
    mine.write_text("mine")
    with pytest.raises(FedctlError, match=r"supernode-1/auth\.key already exists"):
        make_certs(tmp_path / "fresh", 2)
    assert mine.read_text() == "mine" and [p.name for p in (tmp_path / "fresh").rglob("*")] == ["supernode-1", "auth.key"]


@pytest.mark.parametrize("args,error", [
    (["--nodes", "0"], "Error: --nodes 0: a federation needs at least one SuperNode"),
    (["--nodes", "1", "--host", "bad_host"], "Error: --host 'bad_host' is neither an IP address nor a DNS name"),
    (["--nodes", "1", "--host", "10.0.0.5:9092"], "Error: --host '10.0.0.5:9092' is neither an IP address"),
    (["--nodes", "1", "--out-is-a-file"], "is a file, not a folder"),
    (["--nodes", "1", "--twice"], "already exists: fedctl never overwrites certificates or keys"),
])
def test_cli_errors_are_one_error_and_one_hint_line(tmp_path, args, error):
    out = tmp_path / "certs"
    if "--out-is-a-file" in args:
        args = [a for a in args if a != "--out-is-a-file"]
        out.write_text("a file")
        out = out / "inside"
    if "--twice" in args:
        args = [a for a in args if a != "--twice"]
        assert _cli("train", "flower-certs", "--out", str(out), *args).exit_code == 0
    res = _cli("train", "flower-certs", "--out", str(out), *args)
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert len(lines) == 2 and lines[0].startswith("Error: ") and lines[1].startswith("Hint: "), res.output
    assert error in lines[0]


def test_cli_prints_the_deployment_lines(tmp_path):
    res = _cli("train", "flower-certs", "--out", str(tmp_path / "c"), "--nodes", "2", "--host", "10.0.0.5",
               "--superlink-port", "9200")
    assert res.exit_code == 0, res.output
    c = tmp_path / "c"
    assert (f"flower-superlink --ssl-ca-certfile {c}/ca.crt --ssl-certfile {c}/superlink/server.crt "
            f"--ssl-keyfile {c}/superlink/server.key --enable-supernode-auth --port 9200") in res.output
    assert f'root-certificates = "{c}/ca.crt"' in res.output and 'address = "10.0.0.5:9200"' in res.output
    assert f"flwr supernode register {c}/supernode-1/auth.pub fedctl" in res.output
    assert (f"flower-supernode --root-certificates {c}/ca.crt --auth-supernode-private-key {c}/supernode-1/auth.key "
            "--superlink 10.0.0.5:9200 --node-config 'partition-id=1 num-partitions=2'") in res.output
    # flower-app takes the folder, and refuses one with too few keys
    res = _cli("train", "flower-app", "--config", "mamba_tiny", "--clients", "3", "--out", str(tmp_path / "run"),
               "--app", str(tmp_path / "fa"), "--certs", str(c))
    assert res.exit_code == 1 and "Error: " + str(c) + " holds keys for 2 SuperNodes, 3 needed" in res.output
    # on the SuperLink host the node private keys are gone (they live on their nodes): still enough
    for key in c.glob("supernode-*/auth.key"):
        key.unlink()
    res = _cli("train", "flower-app", "--config", "mamba_tiny", "--clients", "2", "--out", str(tmp_path / "run"),
               "--app", str(tmp_path / "fa"), "--certs", str(c))
    assert res.exit_code == 0, res.output


# ---- real processes on 127.0.0.1 ----------------------------------------------------------------------------


@pytest.mark.system
def test_unregistered_keyless_and_untrusting_nodes_are_refused(tmp_path):
    other = make_certs(tmp_path / "other", 2)  # keys and a CA this federation never saw
    seen = []

    def companion(index, runtime_api, env):  # stands in for a long-running ClientApp executor
        seen.append((index, runtime_api, MARKER in env))
        return [sys.executable, "-c", "import time; time.sleep(600)"]

    with LoopbackFederation(tmp_path / "fed", nodes=1, node_companion=companion) as fed:
        node_port = fed.supernodes[0].command[fed.supernodes[0].command.index("--port") + 1]
        assert seen == [(0, f"127.0.0.1:{node_port}", True)] and fed.companions[0].popen.poll() is None
        fed.register([other.node_public_key(1)])  # registered, but it will not trust the SuperLink's CA
        t0 = time.monotonic()
        refused = {
            "unregistered": fed.add_node("partition-id=1", name="unregistered", auth_key=other.node_key(0)),
            "keyless": fed.add_node("partition-id=2", name="keyless"),
            "other-ca": fed.add_node("partition-id=3", name="other-ca", auth_key=other.node_key(1),
                                     root_certificates=other.ca_cert),
        }
        codes = {name: node.wait(120) for name, node in refused.items()}
        elapsed = time.monotonic() - t0
        logs = {name: node.output() for name, node in refused.items()}
        assert codes == {"unregistered": 1, "keyless": 1, "other-ca": 1}, logs
        assert elapsed < 120
        assert all("Exit Code: 305" in log for log in logs.values()), logs  # flwr: cannot connect to the SuperLink
        assert "[code: 2004] Failed to activate SuperNode." in logs["unregistered"]
        assert "SuperNode authentication is enabled. All SuperNodes must be registered via the CLI." in logs["keyless"]
        assert "CERTIFICATE_VERIFY_FAILED" in logs["other-ca"]
        # the SuperLink serves the one registered node that trusts it; the other registered key never came online
        nodes = fed.wait_for_nodes(1, timeout=120)
        assert len(nodes) == 1
        assert sorted(n["status"] for n in fed.list_nodes()) == ["online", "registered"]
        assert fed.supernodes[0].popen.poll() is None
    _assert_nothing_survives(fed)
