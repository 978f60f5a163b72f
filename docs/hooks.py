"""mkdocs hook: links from the tutorial notebooks to other pages (``../results.md``) resolve on the
site as they do in Jupyter, and a link to a page that does not exist fails the build (mkdocs checks
the links of Markdown pages itself, but not those inside a rendered notebook)."""

from __future__ import annotations

import posixpath
import re

from mkdocs.exceptions import PluginError

LINK = re.compile(r'href="(?!https?:|#|mailto:)([^"#]+\.md)(#[^"]*)?"')


def on_post_page(output: str, page, config) -> str:
    if not page.file.src_uri.endswith(".ipynb"):
        return output
    pages = {f.src_uri: f for f in page.file_list} if hasattr(page, "file_list") else None
    files = pages or {f.src_uri: f for f in config["_nailseg_files"]}

    def rewrite(match: re.Match) -> str:
        target = posixpath.normpath(posixpath.join(posixpath.dirname(page.file.src_uri), match.group(1)))
        if target not in files:
            raise PluginError(f"{page.file.src_uri}: links to {match.group(1)}, which is not a page of the site")
        here = posixpath.dirname(page.url.rstrip("/") + "/x")
        url = posixpath.relpath(files[target].url or ".", here or ".")
        return f'href="{url}{"/" if not url.endswith("/") else ""}{match.group(2) or ""}"'

    return LINK.sub(rewrite, output)


def on_files(files, config):
    config["_nailseg_files"] = list(files)
    return files
