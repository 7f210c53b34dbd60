"""Regenerate the Python modules of protos/*.proto (needs the test extra):

    python -m protos.generate           # writes protos/*_pb2.py and their .pyi stubs
    python -m protos.generate --check   # exit 1 if any of them is stale

The stubs are what lets mypy check every use of a protocol message.

The generated code must match the protobuf runtime's major version, which
pyproject.toml pins to the one grpcio-tools generates for.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = sorted((ROOT / "protos").glob("*.proto"))


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc  # type: ignore[import-untyped]  # test extra only; no stubs

    args = ["protoc", f"-I{ROOT}", f"--python_out={out_dir}", f"--pyi_out={out_dir}"]
    args += [str(p.relative_to(ROOT)) for p in PROTOS]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def stale() -> list[str]:
    """Names of generated modules that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        out = []
        for name in generated_names():
            fresh = (Path(tmp) / "protos" / name).read_text()
            current = ROOT / "protos" / name
            if not current.exists() or current.read_text() != fresh:
                out.append(name)
        return out


def generated_names() -> list[str]:
    return [f"{p.stem}_pb2{ext}" for p in PROTOS for ext in (".py", ".pyi")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check for staleness")
    args = parser.parse_args()
    if args.check:
        names = stale()
        if names:
            print(f"stale: {', '.join(names)}; run python -m protos.generate", file=sys.stderr)
            return 1
        return 0
    generate(ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
