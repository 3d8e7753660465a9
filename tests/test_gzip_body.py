"""One gzip member from pieces deflated apart, and the CRC-32 arithmetic behind its trailer."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import shutil
import subprocess
import sys
import threading
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

from agent_registry_exporter import RegistrySnapshot, SessionRow, Thresholds
from agent_registry_exporter.exporting import (
    ISAL,
    OPENMETRICS,
    ExporterMetrics,
    Format,
    Renderer,
)
from agent_registry_exporter.exporting import parts as parts_module
from agent_registry_exporter.exporting.crc import crc32_combine
from agent_registry_exporter.exporting.deflate import Compressor
from agent_registry_exporter.exporting.parts import BATCH, GzipParts, deflate_piece

from .conftest import ENGINES, T0, loopback_exporter

registers = st.integers(0, 2**32 - 1)
texts = st.binary(max_size=300) | st.text(max_size=200).map(str.encode)


class TestCrc32Combine:
    @settings(max_examples=300, deadline=None)
    @given(first=texts, second=texts | st.integers(0, 70_000).map(bytes))
    def test_combined_crc_is_the_crc_of_the_joined_texts(self, first, second) -> None:
        """crc32_combine(crc(a), crc(b), len(b)) == crc(a + b), zero-length and long b too."""
        combined = crc32_combine(zlib.crc32(first), zlib.crc32(second), len(second))
        assert combined == zlib.crc32(first + second)

    @settings(max_examples=300, deadline=None)
    @given(crc1=registers, crc2=registers, len2=st.integers(0, 2**62))
    def test_same_as_isal_for_any_crcs_and_length(self, crc1, crc2, len2) -> None:
        """Equal to ISA-L's C crc32_combine, for any register values and any length."""
        assert ISAL is not None, "isal does not import: `pip install isal`"
        assert crc32_combine(crc1, crc2, len2) == ISAL.crc32_combine(crc1, crc2, len2)

    def test_lengths_past_four_gigabytes_compose(self) -> None:
        """A length past 2**32 is not cut to 32 bits: 2**32 + 1 bytes is 2**32, then 1."""
        step = crc32_combine(crc32_combine(0x1234, 0, 1 << 32), 0, 1)
        assert crc32_combine(0x1234, 0, (1 << 32) + 1) == step


pieces = st.lists(st.tuples(st.booleans(), texts), max_size=12)


@pytest.mark.parametrize("engine", ENGINES)
class TestGzipParts:
    @settings(max_examples=200, deadline=None)
    @given(pieces=pieces, batch=st.sampled_from([1, 64, BATCH]))
    def test_fresh_text_and_spliced_pieces_make_one_member(self, engine, pieces, batch) -> None:
        """Any mix of fresh text and pieces deflated earlier decodes, as one gzip member
        whose CRC and length check, to the texts joined in order; also when the fresh text
        is compressed in batches by the helper thread (a batch of 1 byte: every text)."""
        parts = GzipParts(engine, batch=batch)
        for cached, text in pieces:
            if cached:
                parts.cached(deflate_piece(text, engine))
            else:
                parts.text(text)
        body = b"".join(parts.finish())
        stream = zlib.decompressobj(31)  # raises on a bad CRC-32 or length
        assert stream.decompress(body) == b"".join(text for _, text in pieces)
        assert stream.eof
        assert stream.unused_data == b""

    def test_text_after_a_piece_never_refers_back_across_it(self, engine) -> None:
        """Fresh text repeating what came before a piece still decodes to itself: the running
        stream drops its history before each piece."""
        line = b'agent_registry_user_agents{user_id="same-user"} 3\n' * 40
        parts = GzipParts(engine)
        parts.text(line)
        parts.cached(deflate_piece(b"x" * 5000, engine))
        parts.text(line)
        body = b"".join(parts.finish())
        assert zlib.decompress(body, 31) == line + b"x" * 5000 + line


def helper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "gzip-batches"]


class _FailingCompressor:
    """A deflate stream that fails (a fault injected into the helper thread)."""

    def compress(self, data: bytes, /) -> bytes:
        raise MemoryError("injected: no memory for the deflate state")

    def flush(self, mode: int, /) -> bytes:
        return b""


@pytest.mark.parametrize("engine", ENGINES)
class TestHelperThread:
    def test_batches_compressed_by_the_helper_keep_their_place(self, engine) -> None:
        """Fresh text past the batch size, between cached pieces, decodes in order."""
        texts = [b"%d: " % n + b"fresh line\n" * (n * 50) for n in range(12)]
        parts = GzipParts(engine, batch=2000)
        for n, text in enumerate(texts):
            if n % 3 == 2:
                parts.cached(deflate_piece(text, engine))
            else:
                parts.text(text)
        assert len(helper_threads()) == 1  # the batches went to the helper
        body = b"".join(parts.finish())
        assert helper_threads() == []  # finish waits for it and stops it
        assert zlib.decompress(body, 31) == b"".join(texts)

    def test_a_helper_behind_catches_up_in_one_call(self, engine) -> None:
        """Batches queued while the helper was busy are compressed together, in order, up to
        the next flush (a cached piece between them stays between them)."""
        release, calls = threading.Event(), []

        class Slow:
            def __init__(self, real: Compressor) -> None:
                self.real = real

            def compress(self, data: bytes, /) -> bytes:
                calls.append(len(data))
                if len(calls) == 1:
                    assert release.wait(10)  # busy: the next batches queue up meanwhile
                return self.real.compress(data)

            def flush(self, mode: int, /) -> bytes:
                return self.real.flush(mode)

        slow = dataclasses.replace(engine, compressobj=lambda *a: Slow(engine.compressobj(*a)))
        parts = GzipParts(slow, batch=10)
        texts = [b"batch %d " % n * 3 for n in range(8)]
        for text in texts[:4]:
            parts.text(text)
        parts.cached(deflate_piece(b"piece", engine))
        for text in texts[4:]:
            parts.text(text)
        release.set()
        body = b"".join(parts.finish())
        assert zlib.decompress(body, 31) == b"".join(texts[:4]) + b"piece" + b"".join(texts[4:])
        # Whatever the helper took first, the rest of the batches before the piece came in
        # one call and the four after it in another: three calls at most, none across it.
        assert len(calls) <= 3
        assert sum(calls) == 8 * len(texts[0])
        assert 4 * len(texts[0]) in itertools.accumulate(calls)

    def test_small_bodies_start_no_helper(self, engine) -> None:
        parts = GzipParts(engine)
        parts.text(b"a small body\n" * 100)
        assert helper_threads() == []
        assert zlib.decompress(b"".join(parts.finish()), 31) == b"a small body\n" * 100

    def test_the_helper_stops_when_the_render_fails(self, engine, monkeypatch) -> None:
        """A render that raises half way leaves no thread behind (and its error is its own)."""
        metrics = ExporterMetrics("1")
        rows = [SessionRow(f"user-{n}", 1, T0) for n in range(3000)]
        snapshot = RegistrySnapshot(taken_at=T0, thresholds=Thresholds(), sessions=rows)
        monkeypatch.setattr(parts_module, "BATCH", 1)  # every text to the helper

        def broken(fmt: Format, registry: object) -> bytes:
            assert len(helper_threads()) == 1  # started for the age family, still running
            raise RuntimeError("injected: the exporter's own metrics fail")

        monkeypatch.setattr(Format, "collected", broken)
        with pytest.raises(RuntimeError, match="injected"):
            Renderer(engine=engine).render(snapshot, metrics, format=OPENMETRICS, gzipped=True)
        assert helper_threads() == []

    def test_an_error_in_the_helper_is_raised_by_finish(self, engine) -> None:
        failing = dataclasses.replace(engine, compressobj=lambda *args: _FailingCompressor())
        parts = GzipParts(failing, batch=10)
        parts.text(b"x" * 100)
        with pytest.raises(MemoryError, match="injected"):
            parts.finish()
        assert helper_threads() == []


class TestEngines:
    def test_isal_is_the_default_engine(self) -> None:
        """ISA-L compresses wherever it imports."""
        from agent_registry_exporter.exporting import default_engine

        assert default_engine() is ISAL

    @pytest.mark.processes
    def test_zlib_is_the_fallback_where_isal_does_not_import(self) -> None:
        """Without isal (no wheel for the platform), the standard library's zlib renders."""
        script = (
            "import sys; sys.modules['isal'] = None\n"  # import isal now raises ImportError
            "from agent_registry_exporter.exporting import default_engine, engines\n"
            "print(default_engine().name, len(engines()))"
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["zlib", "1"]


class TestCurl:
    @pytest.mark.processes
    async def test_curl_compressed_reads_every_series_of_an_openmetrics_scrape(
        self, registry
    ) -> None:
        """curl 7.88 reads only the first gzip member: the body must be one, cached pieces
        included (the second scrape reuses them), for every user to come through."""
        curl = shutil.which("curl")
        assert curl, "curl is installed by `make test` (Debian package curl)"
        for n in range(2000):
            await registry.register_user_agent(f"curl-user-{n}", "a", object())
        server = await loopback_exporter(registry)
        try:
            url = f"http://127.0.0.1:{server.port}/metrics"
            for scrape in range(2):
                if scrape:  # a change: one chunk re-rendered, the others reused
                    await registry.register_user_agent("curl-user-7", "b", object())
                done = await asyncio.create_subprocess_exec(
                    curl, "--silent", "--show-error", "--fail", "--compressed",
                    "-H", "Accept: application/openmetrics-text", url,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                out, err = await done.communicate()
                assert done.returncode == 0, err
                families = {f.name: f for f in parse_om(out.decode())}
                agents = {
                    s.labels["user_id"]: s.value
                    for s in families["agent_registry_user_agents"].samples
                }
                assert len(agents) == 2000
                assert agents["curl-user-7"] == 1 + scrape
        finally:
            await server.stop()
