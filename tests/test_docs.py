"""The README leads and the docs hold together: its length, every relative link and anchor in
README.md, SECURITY.md and docs/*.md, the host example as shipped in examples/host/, and the
minimal environment of each sign-in mode accepted by the gateway's own settings check."""
import re
from pathlib import Path

import pytest

from conftest import ROOT
from gateway import config

README = ROOT / "README.md"
PAGES = [README, ROOT / "SECURITY.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def outside_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def prose(text: str) -> str:
    """The text outside code fences and inline code (a link there is an example, not a link)."""
    return re.sub(r"`[^`\n]*`", "", outside_fences(text))


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", outside_fences(path.read_text()).replace("`", ""),
                              flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in LINK.findall(prose(path.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:: not ours to check here
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{path.name}: {target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{path.name}: {target} (no such heading)")
    return broken


def test_the_readme_leads_in_at_most_400_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= 400, len(lines)
    headings = [line for line in lines if line.startswith("## ")]
    assert headings[:2] == ["## Try it: two commands", "## Deploy to production"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## A section: with `code`, punctuation\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-section-with-code-punctuation) [gone](missing.md) [bad](other.md#nope)\n"
                    "`[in code](not-checked.md)`\n```\n[in a fence](not-checked.md)\n```\n")
    assert broken_links(page) == ["page.md: missing.md (no such file)", "page.md: other.md#nope (no such heading)"]


def test_the_settings_table_in_the_docs_links_from_the_readme():
    assert "(docs/settings.md)" in README.read_text()


def code_blocks(text: str, kind: str) -> list[str]:
    return re.findall(rf"^```{kind}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def test_the_readme_host_example_is_the_one_the_demo_serves():
    readme = README.read_text()
    assert (ROOT / "examples" / "host" / "index.html").read_text() in code_blocks(readme, "html")
    assert (ROOT / "examples" / "host" / "insights.js").read_text() in code_blocks(readme, "js")


def minimal_environments() -> dict[str, dict[str, str]]:
    """The README's common block and one block per sign-in mode, NAME=value lines."""
    section = README.read_text().split("### The minimal environment for each sign-in mode", 1)[1].split("\n## ", 1)[0]
    blocks = [dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
              for block in code_blocks(section, "sh")]
    common, *modes = blocks
    return {mode.get("GATEWAY_AUTH_MODE", "assertion" if "GATEWAY_ASSERTION_HEADER" in mode else "header"):
            {**common, **mode} for mode in modes}


def materialised(environment: dict[str, str], directory: Path) -> dict[str, str]:
    """Each *_FILE under /etc/zipteams-gateway/ made a real file in ``directory``, with a fitting value."""
    out = dict(environment)
    for name, value in environment.items():
        if name.endswith("_FILE") and value.startswith("/etc/zipteams-gateway/"):
            path = directory / Path(value).name
            if name == "GATEWAY_TENANTS_FILE":
                path.write_text((ROOT / "tenants.example.toml").read_text())
            else:
                path.write_text("x" * 40)  # long enough for the key and the hand-off secret
            out[name] = str(path)
    return out


def test_the_readme_has_a_minimal_environment_for_each_sign_in_mode_and_each_is_complete(tmp_path):
    environments = minimal_environments()
    assert set(environments) == {"assertion", "header", "oidc", "jwt"}
    for mode, environment in environments.items():
        loaded = config.load(materialised(environment, tmp_path))
        assert loaded["GATEWAY_AUTH_MODE"] == ("header" if mode == "assertion" else mode)
    # And it can fail: without the common block, no mode starts.
    with pytest.raises(config.ConfigError):
        config.load({k: v for k, v in environments["jwt"].items() if not k.startswith("ZIPTEAMS_")})
