"""Perfetto's own configs against a real service: every one of its test/configs/*.cfg
and thirteen from its docs (tests/perfetto_configs/, each naming its origin on its
first line), enabled by a consumer over ipc:// next to a producer named as traced's
probes that offers some of the data sources they name.

Each config is enabled as traced would enable it, or refused with traced's
reason (bad_config.cfg: its trigger timeout is over 7 days); the fields the
service ignores (out of scope here: trace_filter, bugreport_score, ...) are
named, and so are the data sources no producer
offers. What the triggers then do is tests/test_triggers*'s.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.consumer import load_config
from actors.core import trigger_modes
from actors.core.consumer_core import ConsumerError
from tests.processes import Runtime
from tests.waiting import wait_for

CONFIGS = Path(__file__).parent / "perfetto_configs"
PERFETTO_TEST_CONFIGS = sorted(
    p.name for p in CONFIGS.glob("*.cfg") if not p.name.startswith("docs-")
)
DOCS_CONFIGS = sorted(p.name for p in CONFIGS.glob("docs-*.cfg"))
PROBES = "perfetto.traced_probes"
# What the probes producer offers (the synthetic source, under Perfetto's names).
OFFERED = ("linux.ftrace", "linux.process_stats", "linux.sys_stats", "android.log")
GIB = 1 << 30
KEPT_SMB = f"producers[0] (producer {PROBES!r} already has an SMB of 256 KiB in pages of 4 KiB)"

# The fields each config sets that the service ignores, as the enable reply names
# them; a config not listed sets none.
IGNORED = {
    "bugreport.cfg": ["bugreport_score"],
    "ftrace_with_filter.cfg": ["trace_filter"],
    # The probes got their SMB in the fixture: its size stays (one SMB per producer).
    "ftrace.cfg": [KEPT_SMB],
    "ftrace_largebuffer.cfg": [KEPT_SMB],
}
# The configs traced refuses, with the start of the reason.
REFUSED = {
    "bad_config.cfg": "trigger_config.trigger_timeout_ms must be > 0 and at most 7 days "
    "(604800000 ms) with a trigger_mode, got 900000000",
}


def test_every_config_of_perfettos_test_set_and_thirteen_of_its_docs_are_here():
    assert len(PERFETTO_TEST_CONFIGS) == 25 and len(DOCS_CONFIGS) == 13
    for name in PERFETTO_TEST_CONFIGS + DOCS_CONFIGS:
        first = (CONFIGS / name).read_text().splitlines()[0]
        assert first.startswith("# From google/perfetto ") and "(Apache-2.0)" in first, name


@pytest.fixture(scope="module")
def probes() -> Iterator[Runtime]:
    """One service (buffer memory limits fixed, so that a config's fate does not
    depend on the machine's memory) and the probes producer, for every config."""
    with Runtime() as rt:
        limits = ["--max-buffer-bytes-total", str(2 * GIB), "--max-buffer-bytes-per-uid", str(GIB)]
        rt.start_service(*limits)
        args = [a for name in OFFERED for a in ("--data-source", name)]
        rt.start_producer(PROBES, *args, data_sources=OFFERED)
        consumer = rt.consumer()  # a first session gives the probes their SMB
        consumer.enable('buffers { size_kb: 64 } data_sources { config { name: "linux.ftrace" } }')
        consumer.free()
        consumer.close()
        yield rt


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", PERFETTO_TEST_CONFIGS + DOCS_CONFIGS)
def test_a_perfetto_config_is_enabled_or_refused_as_traced_does(probes: Runtime, name: str):
    rt = probes
    config = load_config(CONFIGS / name)
    consumer = rt.consumer()
    out = rt.dir / f"{name}.pftrace"
    if name in REFUSED:
        with pytest.raises(ConsumerError, match=f"^{re.escape(REFUSED[name])}$"):
            consumer.enable(config, output_path=out)
        assert not out.exists()
        consumer.close()
        return
    result = consumer.enable(config, output_path=out if config.write_into_file else None)
    assert list(result.unsupported_fields) == IGNORED.get(name, [])
    assert list(result.unmatched_data_sources) == unmatched(config)
    waits = trigger_modes.mode(config) == config.trigger_config.START_TRACING
    assert result.started != waits  # a START_TRACING session waits for its trigger
    if not waits:
        consumer.disable()
    if config.trigger_config.triggers and not config.write_into_file:
        # No trigger fired: traced returns nothing at all for such a session.
        assert list(consumer.read_buffers()) == []
    consumer.free()
    consumer.close()
    assert out.exists() == config.write_into_file


def unmatched(config) -> list[str]:
    names = dict.fromkeys(ds.config.name for ds in config.data_sources)
    return [n for n in names if n not in OFFERED]


def smb_bytes_mapped(pid: int) -> int:
    """Bytes of SMB memfd that `pid` maps."""
    total = 0
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        if "/memfd:tracebus-smb" in line:
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            total += end - start
    return total


def test_ftrace_cfgs_producers_entry_sizes_the_probes_smb(rt: Runtime):
    """ftrace.cfg asks `producers { producer_name: "perfetto.traced_probes"
    shm_size_kb: 4096 page_size_kb: 4 }`: the probes get a 4 MiB SMB, not their own
    256 KiB; another producer keeps its own size."""
    rt.start_service()
    probes = rt.start_producer(
        PROBES, "--data-source", "linux.ftrace", data_sources=["linux.ftrace"]
    )
    other = rt.start_producer(
        "other",
        "--data-source",
        "linux.process_stats",
        "--smb-size-kb",
        "256",
        data_sources=["linux.process_stats"],
    )
    consumer = rt.consumer()
    result = consumer.enable(load_config(CONFIGS / "ftrace.cfg"))
    assert result.started and list(result.unsupported_fields) == []
    wait_for(lambda: smb_bytes_mapped(probes.pid) == 4096 * 1024, 15, "the probes' 4 MiB SMB")
    wait_for(lambda: smb_bytes_mapped(other.pid) == 256 * 1024, 15, "the other's 256 KiB SMB")
    consumer.free()


def test_the_record_cli_names_every_ignored_field_in_one_warning(rt: Runtime):
    """Perfetto's ftrace_with_filter.cfg through the record CLI: one warning line
    names its trace_filter; the recording goes on and is read back at Ctrl-C."""
    rt.start_service()
    out = rt.dir / "filter.pftrace"
    argv = ["-m", "actors.consumer", "-c", str(CONFIGS / "ftrace_with_filter.cfg"), "--txt"]
    argv += ["-o", str(out), "--consumer-endpoint", rt.consumer_endpoint]
    cli = rt.spawn("record", argv, stderr="lines")
    rt.wait_output(cli, r"does not implement these config fields: trace_filter$")
    cli.send_signal(signal.SIGINT)
    assert rt.finish(cli) == 130, rt.output(cli)  # as after any Ctrl-C
    warnings = [line for line in rt.output(cli).splitlines() if "config fields" in line]
    assert len(warnings) == 1, warnings
    assert out.stat().st_size > 0


def test_the_record_cli_refuses_bad_config_with_traceds_reason(rt: Runtime):
    rt.start_service()
    out = rt.dir / "bad.pftrace"
    cli = rt.start_consumer_cli(
        "-c", str(CONFIGS / "bad_config.cfg"), "--txt", "-o", str(out),
        "--consumer-endpoint", rt.consumer_endpoint,
    )  # fmt: skip
    _, err = rt.communicate(cli)
    assert cli.returncode == 1, err
    assert REFUSED["bad_config.cfg"] in err and not out.exists()
