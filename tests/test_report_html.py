"""The HTML report opens in a real browser (headless Chromium) with every image and section."""
import json
import shutil
import subprocess

import pytest

from conftest import ROOT

CHROMIUM = shutil.which("chromium")
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;
  const heads = [...document.querySelectorAll('h1,h2,h3')].map(h => h.textContent);
  const out = document.createElement('pre'); out.id = 'probe';
  out.textContent = JSON.stringify({images: imgs.length, broken: broken, headings: heads});
  document.body.appendChild(out);
});
</script>"""


def render(html_path, tmp_path) -> dict:
    """Load the page in headless Chromium and read what the probe script found."""
    page = tmp_path / "page.html"
    page.write_text(html_path.read_text().replace("</body>", PROBE + "</body>"))
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    start = out.stdout.index('<pre id="probe">') + len('<pre id="probe">')
    return json.loads(out.stdout[start:out.stdout.index("</pre>", start)].replace("&quot;", '"'))


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/test.sh installs it)")
def test_committed_report_renders_with_every_image_and_section(tmp_path):
    html = ROOT / "reports" / "report.html"
    found = render(html, tmp_path)
    assert found["images"] > 0 and found["broken"] == 0, found
    md = (ROOT / "reports" / "report.md").read_text()
    expected = [line.lstrip("#").strip() for line in md.splitlines() if line.startswith("#")]
    assert found["headings"] == expected
    for section in ("digits: headline table", "Estimator validation", "AIS sandwiches"):
        assert section in found["headings"], section


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/test.sh installs it)")
def test_probe_detects_a_broken_image(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<html><body><h1>x</h1><img src='data:image/png;base64,AAAA'></body></html>")
    assert render(page, tmp_path)["broken"] == 1
