"""Writes docs/plots/offline_template.html: the page `dvc plots show` fills (set in .dvc/config as
`plots.html_template`), with Vega, Vega-Lite and Vega-Embed inlined so the rendered
dvc_plots/index.html draws its charts without a network (DVC's own page loads them from a CDN).

    python docs/plots/build_template.py            # fetches the pinned packages with `npm pack`
    python docs/plots/build_template.py --tarballs DIR   # or uses vega-5.33.1.tgz ... from DIR

The majors are the ones dvc_render's templates are written for (vega 5, vega-lite 5, vega-embed 6;
it loads vega@5.20.2, vega-lite@5.2.0, vega-embed@6.18.2); the pins are the newest of each major.
Licenses (all BSD-3-Clause, with what they bundle) are in docs/plots/licenses/.
"""

from __future__ import annotations

import argparse
import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGES = {  # npm name -> (version, file in the package)
    "vega": ("5.33.1", "package/build/vega.min.js"),
    "vega-lite": ("5.23.0", "package/build/vega-lite.min.js"),
    "vega-embed": ("6.29.0", "package/build/vega-embed.min.js"),
}
HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "offline_template.html"
# dvc_render replaces these anywhere in the page: they must appear only where we put them.
PLACEHOLDERS = ("{plot_divs}", "{refresh_tag}", "{scripts}")

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
{refresh_tag}
<title>pneumonia: DVC plots</title>
<!-- Built by docs/plots/build_template.py: {versions}
are inlined (BSD-3-Clause, see docs/plots/licenses/) so this page needs no network.
There is deliberately no scripts placeholder: DVC would put its CDN script tags there. -->
{inlined}
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
  body > div { display: inline-block; vertical-align: top; margin: 0 1.5em 1.5em 0; }
  img { max-width: 100%; }
</style>
</head>
<body>
<h1>pneumonia: training curves, test evaluation, sample grids</h1>
<p>Test-split figures use the threshold chosen on val. Sources: reports/ (see dvc.yaml, plots).</p>
{plot_divs}
</body>
</html>
"""


def script_text(tarball: Path, member: str) -> str:
    with tarfile.open(tarball) as archive:
        text = archive.extractfile(member).read().decode("utf-8")
    # The source map is not shipped; a browser's developer tools would look for it.
    text = "\n".join(
        line for line in text.splitlines() if not line.startswith("//# sourceMappingURL=")
    )
    # Inside <script> the HTML parser stops at "</script" and changes state at "<!--".
    for forbidden in ("</script", "<!--", *PLACEHOLDERS):
        if forbidden in text:
            raise ValueError(f"{tarball.name}:{member} contains {forbidden!r}; cannot inline it")
    return text


def build(tarballs: Path) -> str:
    scripts = []
    for name, (version, member) in PACKAGES.items():
        text = script_text(tarballs / f"{name}-{version}.tgz", member)
        scripts.append(f"<script>/* {name} {version} */\n{text}\n</script>")
    versions = ", ".join(f"{name} {version}" for name, (version, _) in PACKAGES.items())
    # The scripts go in last, so no replacement can reach into them.
    return PAGE.replace("{versions}", versions).replace("{inlined}", "\n".join(scripts))


def npm_pack(folder: Path) -> None:
    specs = [f"{name}@{version}" for name, (version, _) in PACKAGES.items()]
    subprocess.run(
        ["npm", "pack", "--silent", *specs], cwd=folder, check=True, stdout=subprocess.DEVNULL
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tarballs", type=Path, help="folder with the npm pack .tgz files")
    arguments = parser.parse_args()
    if arguments.tarballs:
        TEMPLATE.write_text(build(arguments.tarballs), encoding="utf-8")
    else:
        with tempfile.TemporaryDirectory() as folder:
            npm_pack(Path(folder))
            TEMPLATE.write_text(build(Path(folder)), encoding="utf-8")
    print(f"wrote {TEMPLATE} ({TEMPLATE.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
