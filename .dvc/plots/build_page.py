"""Build page.html: the HTML template `dvc plots show` fills (.dvc/config: plots.html_template).

It holds vega, vega-lite and vega-embed inline (no CDN: the page draws offline) and a
layout that fits the figures to the window. Rebuild after changing the versions below:

    python .dvc/plots/build_page.py      # needs npm (fetches the three packages with npm pack)

DVC replaces the plot_divs placeholder with the plots of dvc.yaml's `plots:` section (vega
plots first, images last: the page's style puts the images first on screen) and the
refresh_tag placeholder with `dvc plots show --refresh`'s tag. The page has no scripts
placeholder: DVC would put its CDN <script> tags there.
"""
from __future__ import annotations

import subprocess
import tarfile
import tempfile
from pathlib import Path

#: package -> (version, the minified bundle inside its npm tarball)
BUNDLES = {"vega": ("5.33.1", "package/build/vega.min.js"),
           "vega-lite": ("5.23.0", "package/build/vega-lite.min.js"),
           "vega-embed": ("6.29.0", "package/build/vega-embed.min.js")}

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
{refresh_tag}
<title>fewlabel: results</title>
<style>
  /* DVC writes the vega plots first and the images last; the figures of all classes come
     first on screen (flex order), then the interactive plots, which wrap to the window. */
  body { font-family: system-ui, sans-serif; margin: 1em 2em; display: flex; flex-wrap: wrap;
         align-items: flex-start; gap: 0.5em 1.5em; }
  body > header { order: -2; flex-basis: 100%; }
  body > div[id$="_png"] { order: -1; flex-basis: 100%; border: none !important; white-space: normal !important; }
  body > div[id$="_png"] div { display: block !important; border: none !important; margin: 0 !important; }
  img { max-width: 100%; height: auto; }
  p { font-weight: 600; margin: 0.3em 0; }
</style>
SCRIPTS
</head>
<body>
<header>
<h1>fewlabel: results</h1>
<p style="font-weight:normal">The figures of all classes first, then the interactive plots, per
class. Drawn offline: vega VEGA, vega-lite LITE and vega-embed EMBED are inside this page
(BSD-3-Clause, University of Washington Interactive Data Lab).</p>
</header>
{plot_divs}
</body>
</html>
"""


def bundle(package: str, version: str, member: str, folder: Path) -> str:
    subprocess.run(["npm", "pack", "--silent", f"{package}@{version}"], cwd=folder, check=True,
                   capture_output=True)
    with tarfile.open(folder / f"{package}-{version}.tgz") as tar:
        code = tar.extractfile(member).read().decode()
    # a literal </script> inside the bundle would end the tag early; DVC fills placeholders
    # by plain text replacement, so none may occur in the bundle
    assert "</script" not in code.lower(), package
    assert not any(p in code for p in ("{plot_divs}", "{refresh_tag}", "{scripts}")), package
    return f"<script>/* {package}@{version} (npm), BSD-3-Clause */\n{code}\n</script>"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        scripts = "\n".join(bundle(name, version, member, Path(tmp)) for name, (version, member) in BUNDLES.items())
    page = PAGE.replace("VEGA", BUNDLES["vega"][0]).replace("LITE", BUNDLES["vega-lite"][0])
    page = page.replace("EMBED", BUNDLES["vega-embed"][0]).replace("SCRIPTS", scripts)
    out = Path(__file__).with_name("page.html")
    out.write_text(page)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
