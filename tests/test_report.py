"""The grill's study report: HTML (rendered in headless Chromium) and Markdown with plots."""
from __future__ import annotations

import base64
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnlab.cli import _load_commands, app
from attnlab.grill import runner
from attnlab.grill.registry import Evidence, EvidenceContext, Question, all_questions
from attnlab.grill.report import paragraphs, render_markdown, write_markdown
from attnlab.grill.report_html import to_html, write_html
from attnlab.grill.runner import Result, run_one

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]  # small /dev/shm in containers


# --- PNG writing and decoding without third-party code ---------------------------------

def write_png(path: Path, width: int, height: int) -> None:
    """An RGB gradient PNG (filter 0 rows), enough to be a real image."""
    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 255 // width, y * 255 // height, 90))
        for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def decode_png(data: bytes) -> tuple[int, int]:
    """Decode a PNG's structure: signature, every chunk CRC, IHDR, inflated IDAT size and
    row filter bytes. Returns (width, height); raises AssertionError on any defect."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "bad PNG signature"
    pos, idat, ihdr, seen_end = 8, b"", None, False
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, f"CRC mismatch in {kind!r}"
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            seen_end = True
            break
        pos += 12 + n
    assert ihdr is not None and seen_end, "missing IHDR or IEND"
    w, h, depth, color, _, _, interlace = ihdr
    assert interlace == 0, "interlaced PNGs are not expected here"
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    stride = (w * channels * depth + 7) // 8
    raw = zlib.decompress(idat)
    assert len(raw) == h * (stride + 1), f"inflated {len(raw)} bytes, expected {h * (stride + 1)}"
    assert all(raw[r * (stride + 1)] <= 4 for r in range(h)), "bad row filter byte"
    try:  # a second, independent decoder where one is installed (viz extra brings Pillow)
        import io

        from PIL import Image
    except ImportError:
        return w, h
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.size == (w, h)
    return w, h


# --- a small fake registry: answered (with a plot), failing, pending --------------------

def _plotting_evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    ev.measurements["tokens"] = 4096
    ev.measurements["bytes/token"] = 131072.0
    ev.key_figure = "128 KiB per token"
    ev.measurements["ratio"] = 0.185333333
    ev.check("bytes match formula", True, "2·32·8·128·2")
    ev.check("decode beats prefill per token", True, "3.1× faster", timing=True)
    ev.cite("LLaMA-2 70B uses 8 KV heads", "LLaMA-2 paper, Table 1")
    if ctx.plot_dir:
        p = Path(ctx.plot_dir) / "kv_vs_context.png"
        write_png(p, 40, 24)
        ev.plots.append(str(p))
    return ev


def _failing_evidence(ctx: EvidenceContext) -> Evidence:
    ev = Evidence()
    ev.check("a claim that does not hold", False, "measured 3, expected 4")
    return ev


def fake_questions() -> list[Question]:
    qs = []
    for qid in range(1, 51):
        if qid == 38:
            qs.append(Question(id=38, title="KV growth <linear>", answer="Grows & grows.\n\nTwice.",
                               short="Every token adds its K and V. So memory is linear <N>.",
                               formulas=["KV bytes/token = 2 · n_layers · n_kv_heads · d_h · b"],
                               seed_note="The seed lost the formula.", evidence=_plotting_evidence))
        elif qid == 9:
            qs.append(Question(id=9, title="Causal mask", answer="Lower triangle.",
                               short="Token i sees keys j <= i only.",
                               evidence=_failing_evidence))
        else:
            qs.append(Question(id=qid, title=f"Title {qid}", answer=""))
    return qs


@pytest.fixture
def fake_results(tmp_path) -> list[Result]:
    ctx = EvidenceContext(plot_dir=str(tmp_path / "plots"))
    (tmp_path / "plots").mkdir()
    return [run_one(q, ctx) for q in fake_questions()]


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.imgs: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("style", "script"):
            self._skip += 1
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag in ("style", "script"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def _parse(html: str) -> _Text:
    p = _Text()
    p.feed(html)
    return p


def _embedded_pngs(srcs: list[str]) -> list[bytes]:
    out = []
    for src in srcs:
        assert src.startswith("data:image/png;base64,"), src[:40]
        out.append(base64.b64decode(src.split(",", 1)[1], validate=True))
    return out


def assert_short_answer_first(text: str) -> None:
    """In the fake report, each answered question's short answer comes right after its
    heading, before the depth, the formulas, the evidence and the seed note."""
    q38 = text.index("Q38. KV growth <linear>", text.index("Q50.") + 1)  # past the contents
    order = [text.index(piece, q38) for piece in (
        "Every token adds its K and V. So memory is linear <N>.", "Grows & grows.",
        "KV bytes/token = 2", "128 KiB per token", "The seed lost the formula.")]
    assert order == sorted(order), order
    q9 = text.index("Q9. Causal mask", text.index("Q50.") + 1)
    assert text.index("Token i sees keys j <= i only.", q9) < text.index("Lower triangle.", q9)


def test_html_has_every_question_escaped_text_and_embedded_plot(fake_results):
    html = to_html(fake_results)
    assert "http://" not in html and "https://" not in html and "<script" not in html
    parsed = _parse(html)
    text = " ".join(parsed.parts)
    for qid in range(1, 51):
        assert f"Q{qid}." in text, qid
    assert "KV growth <linear>" in text and "Grows & grows." in text  # escaped, then rendered
    assert "KV bytes/token = 2 · n_layers · n_kv_heads · d_h · b" in text
    assert "The seed lost the formula." in text and "128 KiB per token" in text
    assert "measured 3, expected 4" in text and text.count("evidence not run") == 0
    assert text.count("pending") >= 48
    assert_short_answer_first(text)
    assert "0.185" in text and "0.18533" not in text  # rounded to meaningful digits
    flat = re.sub(r"\s+", " ", text)
    assert "PASS (timing) decode beats prefill" in flat
    assert "LLaMA-2 70B uses 8 KV heads — LLaMA-2 paper, Table 1" in flat
    assert "PASS LLaMA-2" not in flat  # a citation is never shown as PASS
    pngs = _embedded_pngs(parsed.imgs)
    assert len(pngs) == 1 and decode_png(pngs[0]) == (40, 24)


def test_markdown_copies_plots_beside_and_matches_html_content(fake_results, tmp_path):
    md_path = tmp_path / "out" / "study.md"
    md_path.parent.mkdir()
    files = write_markdown(fake_results, md_path)
    md = md_path.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links == ["study_files/q38_0_kv_vs_context.png"]
    copied = md_path.parent / links[0]
    assert copied.parent == files and decode_png(copied.read_bytes()) == (40, 24)
    for qid in range(1, 51):
        assert f"### Q{qid}." in md and f"\n| {qid} | " in md
    for piece in ("KV bytes/token = 2 · n_layers", "The seed lost the formula.",
                  "128 KiB per token", "| bytes/token |", "[FAIL] a claim that does not hold",
                  "Machine: "):
        assert piece in md, piece
    assert runner.to_markdown(fake_results) == render_markdown(fake_results)
    q38 = md.index("### Q38.")
    assert (q38 < md.index("**Short answer.** Every token adds", q38) < md.index("Grows & grows.")
            < md.index("```text", q38) < md.index("**Evidence**", q38)
            < md.index("> **Seed note.**", q38))
    assert "| ratio | 0.185 |" in md and "[PASS (timing)] decode beats prefill" in md
    assert "- [cited] LLaMA-2 70B uses 8 KV heads — LLaMA-2 paper, Table 1" in md


def test_missing_or_non_png_plot_is_reported_not_embedded(tmp_path):
    bogus = tmp_path / "plot.png"
    bogus.write_text("not an image")

    def ev_fn(ctx):
        ev = Evidence(plots=[str(bogus), str(tmp_path / "gone.png")])
        ev.check("ok", True)
        return ev

    r = run_one(Question(id=5, title="t", answer="a", evidence=ev_fn), EvidenceContext())
    html = to_html([r])
    assert "<img" not in html and "not a PNG file" in html and "cannot read plot" in html


def test_real_registry_report_without_running_evidence():
    """All 50 real questions render, answered ones with their text, pending ones marked."""
    results = [Result(q, "not run" if q.answered else "pending") for q in all_questions()]
    text = " ".join(_parse(to_html(results)).parts)
    for q in all_questions():
        assert f"Q{q.id}. {q.title}" in text
        if q.answered:
            assert paragraphs(q.answer)[0][:60] in text, q.id
        if q.short:
            at = text.index(f"Q{q.id}. {q.title}", text.index("Q50.") + 1)
            assert at < text.index(q.short.strip()[:60], at) < text.index(
                paragraphs(q.answer)[0][:60], at), f"Q{q.id}: short answer not first"
    assert text.count("evidence not run") >= sum(q.answered for q in all_questions())


def test_cli_html_and_markdown_collect_plots_from_evidence(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "all_questions", fake_questions)
    _load_commands()
    html, md = tmp_path / "r.html", tmp_path / "r.md"
    res = CliRunner().invoke(app, ["grill", "--html", str(html), "--markdown", str(md)])
    assert res.exit_code == 1, res.output  # Q9's failing check makes the run fail
    pngs = _embedded_pngs(_parse(html.read_text()).imgs)
    assert len(pngs) == 1 and decode_png(pngs[0]) == (40, 24)
    assert (tmp_path / "r_files" / "q38_0_kv_vs_context.png").is_file()


def test_cli_html_on_real_registry_question(tmp_path):
    _load_commands()
    out = tmp_path / "q35.html"
    res = CliRunner().invoke(app, ["grill", "--question", "35", "--html", str(out)])
    assert res.exit_code in (0, 1), res.output  # 1 only if a timing check lost to the load
    html = out.read_text()
    text = " ".join(_parse(html).parts)
    assert "Q35." in text and "PASS" in text and "Short answer." in text
    assert set(re.findall(r'<span class="bad">([^<]*)</span>', html)) <= {"FAIL (timing)"}


# --- headless Chromium --------------------------------------------------------------------

PROBE = """<script>
window.addEventListener('load', () => {
  const r = Array.from(document.images).map(
    i => (i.complete && i.naturalWidth > 0) ? i.naturalWidth + 'x' + i.naturalHeight : 'BROKEN');
  document.body.setAttribute('data-decoded-images', r.join(',') || 'none');
});
</script>"""


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def test_html_renders_in_headless_chromium(fake_results, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); the HTML report "
                    "could not be rendered in a browser on this machine")
    report = tmp_path / "report.html"
    write_html(fake_results, report)
    # The probe (added to a copy, never to the report) records what the browser decoded.
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text().replace("</body>", PROBE + "</body>"))

    def chromium(*args: str) -> subprocess.CompletedProcess:
        profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
        profile.mkdir()
        return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              check=False, capture_output=True, text=True, timeout=120)

    dom = chromium("--virtual-time-budget=3000", "--dump-dom", probed.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = _parse(dom.stdout)
    text = " ".join(parsed.parts)
    for qid in range(1, 51):
        assert f"Q{qid}." in text, f"Q{qid} missing from the rendered page"
    assert_short_answer_first(text)  # as the browser laid the page out
    decoded = re.search(r'data-decoded-images="([^"]*)"', dom.stdout)
    assert decoded is not None, "the page's load event never ran"
    assert decoded.group(1) == "40x24"  # Chromium decoded the one embedded plot
    for png in _embedded_pngs(parsed.imgs):
        decode_png(png)

    shot = tmp_path / "shot.png"
    res = chromium("--window-size=1000,1400", f"--screenshot={shot}", report.as_uri())
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    data = shot.read_bytes()
    assert decode_png(data) == (1000, 1400)
    idat = zlib.decompress(b"".join(_idat_chunks(data)))
    assert len(set(idat[: 1400 * 100])) > 10, "screenshot looks blank"


def _idat_chunks(data: bytes):
    pos = 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        if data[pos + 4:pos + 8] == b"IDAT":
            yield data[pos + 8:pos + 8 + n]
        pos += 12 + n


def test_real_report_opens_every_answer_with_its_short_answer_in_chromium(tmp_path):
    """The real registry's report (evidence not run), as Chromium lays it out: every answered
    question has a short interview answer, and it is the first thing under its heading."""
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    qs = all_questions()
    report = tmp_path / "real.html"
    write_html([Result(q, "not run" if q.answered else "pending") for q in qs], report)
    profile = tmp_path / "profile"
    profile.mkdir()
    dom = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                          report.as_uri()], check=False, capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    sections = re.findall(r'<section class="q" id="q(\d+)">(.*?)</section>', dom.stdout,
                          re.DOTALL)
    assert [int(i) for i, _ in sections] == [q.id for q in qs]
    missing = []
    for q, (_, body) in zip(qs, sections, strict=True):
        if not q.answered:
            continue
        first = re.search(r"</h3>\s*<p([^>]*)>(.*?)</p>", body, re.DOTALL)
        if not q.short.strip() or first is None or 'class="short"' not in first.group(1):
            missing.append(q.id)
            continue
        shown = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", first.group(2)))
        assert re.sub(r"\s+", " ", q.short.strip())[:80] in shown.replace("&amp;", "&").replace(
            "&lt;", "<").replace("&gt;", ">"), q.id
    assert not missing, f"answered questions without a short answer shown first: {missing}"
