"""CURVE keys of the relay link, in ZeroMQ's certificate files (zmq.auth).

A key pair is two files: NAME.key (the public key, to hand out) and
NAME.key_secret (public and secret, to keep: 0600). The service holds its own
pair and a directory of the relays' public keys it accepts; a relay holds its
own pair and the service's public key.

    python -m actors.relay_keys DIR NAME     # writes DIR/NAME.key, DIR/NAME.key_secret

A typical setup, on the service's machine and on each relay's:

    python -m actors.relay_keys keys service
    python -m actors.relay_keys keys robot1
    mkdir -p keys/relays && cp keys/robot1.key keys/relays/
    python -m actors.service --relay-endpoint tcp://0.0.0.0:7010 \\
        --relay-key keys/service.key_secret --relay-clients keys/relays
    python -m actors.relay --service tcp://base:7010 \\
        --key keys/robot1.key_secret --service-key keys/service.key
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import zmq.auth


class KeyFileError(ValueError):
    """A key file that is missing or not a ZeroMQ certificate of the right kind."""


def generate(directory: Path, name: str) -> tuple[Path, Path]:
    """A new key pair in `directory` (made 0700 if missing): (public, secret) paths.
    Refuses to overwrite an existing pair."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise KeyFileError(f"{path} exists: remove it first to make a new key")
    made_public, made_secret = zmq.auth.create_certificates(str(directory), name)
    os.chmod(made_secret, 0o600)
    return Path(made_public), Path(made_secret)


def load_pair(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys of a NAME.key_secret file."""
    public, secret = _load(path)
    if secret is None:
        raise KeyFileError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


def load_public(path: Path) -> bytes:
    """The Z85 public key of a NAME.key (or NAME.key_secret) file."""
    return _load(path)[0]


def load_directory(directory: Path) -> set[bytes]:
    """The public keys of every *.key file in `directory`."""
    if not directory.is_dir():
        raise KeyFileError(f"{directory} is not a directory of public keys")
    return {load_public(path) for path in sorted(directory.glob("*.key"))}


def _load(path: Path) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as e:
        raise KeyFileError(f"cannot read the key file {path}: {e}") from None
    if public is None or len(public) != 40:
        raise KeyFileError(f"{path} holds no CURVE public key")
    return public, secret


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m actors.relay_keys", description="Make a CURVE key pair for the relay link."
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument("name", help="NAME.key and NAME.key_secret are written")
    args = parser.parse_args(argv)
    try:
        public, secret = generate(args.directory, args.name)
    except KeyFileError as e:
        print(f"relay_keys: {e}", file=sys.stderr)
        return 1
    print(f"public key: {public}\nsecret key: {secret} (keep it private)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
