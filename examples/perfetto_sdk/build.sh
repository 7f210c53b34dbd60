#!/bin/sh
# Builds producer_app and consumer_app against the amalgamated Perfetto SDK of
# a Perfetto v14.0 checkout (its sdk/perfetto.{h,cc}), with g++, into OUTDIR.
#
#   examples/perfetto_sdk/build.sh PERFETTO_V14_CHECKOUT OUTDIR
#
# perfetto.cc is compiled once into OUTDIR/perfetto.o (about 90 s on 2 cores)
# and reused while it is newer than the SDK's sources.
set -eu
if [ $# -ne 2 ]; then
  echo "usage: $0 PERFETTO_V14_CHECKOUT OUTDIR" >&2
  exit 2
fi
sdk="$1/sdk"
out="$2"
here="$(cd "$(dirname "$0")" && pwd)"
cxx="${CXX:-g++}"
flags="-std=c++17 -O1 -pthread"
[ -f "$sdk/perfetto.cc" ] && [ -f "$sdk/perfetto.h" ] || {
  echo "$0: no sdk/perfetto.cc and sdk/perfetto.h under $1" >&2
  exit 1
}
mkdir -p "$out"
if [ ! -f "$out/perfetto.o" ] || [ "$sdk/perfetto.cc" -nt "$out/perfetto.o" ] ||
  [ "$sdk/perfetto.h" -nt "$out/perfetto.o" ]; then
  echo "compiling $sdk/perfetto.cc (slow)"
  $cxx $flags -I"$sdk" -c "$sdk/perfetto.cc" -o "$out/perfetto.o"
fi
for app in producer_app consumer_app; do
  echo "building $out/$app"
  $cxx $flags -I"$sdk" "$here/$app.cc" "$out/perfetto.o" -o "$out/$app"
done
