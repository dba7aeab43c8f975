"""SuperNode keys, and authentication for `fedsqueeze deploy --auth` (Flower's CLI-managed
mode).

A Flower SuperNode signs every Fleet call (a timestamp, ECDSA) and the SuperLink verifies it,
with or without authentication; without a key file Flower makes a NIST P-384 pair. The
launcher gives each SuperNode its own P-256 pair instead (OpenSSH format, as Flower loads
them): 128-bit security, the curve TLS uses by default, and on this box 0.025 ms to sign and
0.065 ms to verify against 0.28 and 0.52 ms for P-384 (about 2 % of a warm round's CPU).
With `--auth` the SuperLink runs with `--enable-supernode-auth` and only accepts SuperNodes
whose public key was registered with `flwr supernode register KEY.pub CONNECTION`. On real
machines: generate the pair on the SuperNode's host (`ssh-keygen -t ecdsa -b 256 -N "" -f
node`), register `node.pub` from the machine that holds the SuperLink connection, start the
SuperNode with `--auth-supernode-private-key node`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .flower import CONNECTION, flower_command
from .processes import ProcessGroup


@dataclass(frozen=True)
class NodeKey:
    private: Path
    public: Path

    def supernode_args(self) -> list[str]:
        return ["--auth-supernode-private-key", str(self.private)]


def new_private_key() -> ec.EllipticCurvePrivateKey:
    """A SuperNode's key: P-256 (the module docstring says why)."""
    return ec.generate_private_key(ec.SECP256R1())


def make_node_key(directory: Path, name: str) -> NodeKey:
    """Write `<name>` (private, 0600) and `<name>.pub` in OpenSSH format into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    key = new_private_key()
    private = directory / name
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public = directory / f"{name}.pub"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH))
    return NodeKey(private, public)


def node_key(directory: Path, name: str) -> tuple[NodeKey, bool]:
    """The pair `<name>`, `<name>.pub` in `directory` if both are there, else a new one;
    (key, made now)."""
    key = NodeKey(directory / name, directory / f"{name}.pub")
    if key.private.is_file() and key.public.is_file():
        return key, False
    return make_node_key(directory, name), True


def register(group: ProcessGroup, env: dict[str, str], public_key: Path) -> int:
    """`flwr supernode register KEY.pub`: the SuperLink accepts this key from now on; returns
    the node id Flower assigns."""
    command = [flower_command("flwr"), "supernode", "register", str(public_key), CONNECTION,
               "--format", "json"]
    done = group.run(command, env, timeout=120)
    try:
        answer = json.loads(done.stdout)
        return int(answer["node-id"])
    except (ValueError, KeyError, TypeError):
        raise RuntimeError(f"flwr supernode register {public_key.name} failed:\n"
                           + (done.stdout + done.stderr).strip()[-3000:]) from None
