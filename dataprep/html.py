"""HTML pages as text: the main content a reader sees (trafilatura, with the fixes below), and the
charset a page declares when it is not UTF-8."""
from __future__ import annotations

import re

# The main content of a page as a reader sees it: trafilatura finds it (bench/prep_html.py
# compared it with readability-lxml + inscriptis/markdownify and with the hand-written bs4 rules this
# replaced, on documentation, blog, forum, table and legal pages: it kept the least navigation and
# lost the least text). Around it, three things it does not do well on its own:
#   - <pre> blocks: it joins their lines (and drops their blank lines) inside lists and definition
#     lists, so each one is swapped for a placeholder before and put back verbatim, fenced, after;
#   - footnotes in <aside role="doc-footnote"> (Sphinx, docutils): it drops every <aside>, so those
#     become <div>s;
#   - <br>: it makes each one a paragraph break, and a <div> of <br>-separated lines can move above
#     the heading before it; each becomes a token in the text, put back after: one is a line break
#     in its block, two or more in a row end the block (a forum post's stanzas, an address stays one);
#   - <blockquote>: its markdown has no "> ", so start and end marks go around it, and the lines
#     between are quoted after (nested ones deeper);
#   - marks inside the content that are chrome: permalink marks (the "¶" of Sphinx headings) and a
#     few classes by whole name (never a substring: a legal section id="cookie-policy" is content).
# On a page with too little text for its heuristics it falls back to keeping most text, so elements
# that are chrome by their tag or ARIA role (nav, forms, dialogs, page header/footer) go first.
_CHROME_TAGS = {"script", "style", "noscript", "nav", "form", "button", "select", "input", "iframe", "svg",
                "template", "dialog", "menu", "canvas", "object"}
_CHROME_ROLES = {"navigation", "banner", "contentinfo", "search", "dialog", "alertdialog", "menu", "menubar"}
_CHROME_CLASSES = {"headerlink", "mw-editsection", "signature", "pagination", "cookie-banner", "cookie-consent",
                   "cookie-notice", "cookiebanner", "consent-banner", "cookie-consent-banner", "cc-window", "skip-link",
                   "share-buttons", "breadcrumbs", "breadcrumb"}
_PERMALINK = {"¶", "§", "#", "🔗", "link"}
# trafilatura's markdown escapes what markdown would read as syntax, and nothing else: the inline
# marks anywhere in prose (doubling a backslash that was there, so a run of 2k+1 backslashes is k of
# the author's), a block mark at a line's start, a table cell's pipe; code spans are verbatim.
# Only those are undone, so an author's own backslashes (a regex, LaTeX's \{) stay; except a cell's
# pipe, which is kept: "| Pear | special | 2.50 |" reads as three cells.
_CODE_SPAN = re.compile(r"(`+)(?:.+?)\1", re.S)
_INLINE_ESCAPE = re.compile(r"(\\+)([*_`~\[\]<])")
_BLOCK_ESCAPE = re.compile(r"^([ \t]*(?:- |\d{1,9}\. )?[ \t]*)(\d{1,9})?\\([#>+\-.)])", re.M)
_SUP = re.compile(r"<sup>(.*?)</sup>", re.S)
_SUB = re.compile(r"</?sub>")


def _unescape_markdown(text: str) -> str:
    def prose(t: str) -> str:
        t = _INLINE_ESCAPE.sub(lambda m: "\\" * (len(m.group(1)) // 2) + m.group(2), t)
        t = _BLOCK_ESCAPE.sub(lambda m: m.group(1) + (m.group(2) or "") + m.group(3), t)
        # 10<sup>6</sup> is 10^6, not 106; H<sub>2</sub>O reads as H2O
        t = _SUP.sub(lambda m: "^" + (m.group(1) if re.fullmatch(r"-?\w+", m.group(1)) else f"({m.group(1)})"), t)
        return _SUB.sub("", t)

    out, last = [], 0
    for m in _CODE_SPAN.finditer(text):
        out += [prose(text[last:m.start()]), m.group()]
        last = m.end()
    return "".join(out + [prose(text[last:])])


def html_text(markup: str) -> list[str]:
    """The readable blocks of an HTML page (paragraphs, headings as "# ...", list items as "- ...",
    table rows as "| a | b |", code blocks fenced with ``` and verbatim), without navigation,
    headers, footers, banners or permalink marks."""
    import secrets
    import textwrap

    import lxml.html
    import trafilatura
    from lxml import etree

    # lxml refuses a str that declares its own encoding (an XHTML page's <?xml ... encoding=...?>):
    # it is decoded already
    markup = _XML_DECLARATION.sub("", markup, count=1)
    try:
        tree = lxml.html.fromstring(markup)
    except (etree.ParserError, ValueError):
        return []
    code: dict[str, str] = {}
    token = secrets.token_hex(6)
    br, quote, quotes = f"dataprepbr{token}", f"dataprepquote{token}", []
    for el in list(tree.iter()):
        if not isinstance(el.tag, str) or el.getparent() is None:
            continue
        tag, role = el.tag.lower(), (el.get("role") or "").lower()
        names = set((el.get("class") or "").split()) | {el.get("id") or ""}
        outer = not any(a.tag in ("article", "main") for a in el.iterancestors())
        if (tag in _CHROME_TAGS or role in _CHROME_ROLES or names & _CHROME_CLASSES or el.get("hidden") is not None
                or el.get("aria-hidden") == "true" or (tag in ("header", "footer") and outer)
                or (tag == "a" and el.text_content().strip() in _PERMALINK and (el.get("href") or "").startswith("#"))):
            el.drop_tree()
        elif tag == "aside" and ("footnote" in role or any("footnote" in n for n in names)):
            el.tag = "div"
        elif tag == "pre":
            for line_break in el.iter("br"):  # text_content() drops it: a browser shows a line break
                line_break.tail = "\n" + (line_break.tail or "")
            key = f"dataprepcode{secrets.token_hex(8)}"
            # tabs stay tabs (a Makefile's recipe lines need them); dedent only strips a prefix
            # every line shares, so a tab-indented block loses only what all its lines have
            code[key] = textwrap.dedent(el.text_content()).strip("\n")
            p = etree.Element("p")
            p.text, p.tail = key, el.tail
            el.getparent().replace(el, p)
        elif tag == "br":
            prev, parent = el.getprevious(), el.getparent()
            mark = f" {br} {el.tail or ''}"
            if prev is None:
                parent.text = (parent.text or "") + mark
            else:
                prev.tail = (prev.tail or "") + mark
            parent.remove(el)
        elif tag == "blockquote":
            parent, n = el.getparent(), len(quotes)
            quotes.append(n)
            start, end = etree.Element("p"), etree.Element("p")
            start.text, end.text, end.tail, el.tail = f"{quote}s{n}", f"{quote}e{n}", el.tail, None
            i = parent.index(el)
            parent.insert(i + 1, end)
            parent.insert(i, start)
    text = trafilatura.extract(tree, include_tables=True, include_comments=False, include_formatting=True,
                               include_links=False, include_images=False, deduplicate=False,
                               output_format="markdown") or ""
    text = _unescape_markdown(text)
    if quotes:
        # a quote is marked only when both its marks came out on lines of their own: inside a list
        # item or a table cell trafilatura runs them into the text, and there they are dropped
        alone = re.findall(rf"^[ \t]*{quote}([se]\d+)[ \t]*$", text, re.M)
        paired = {m[1:] for m in alone if m[0] == "s" and "e" + m[1:] in alone}
        text = re.sub(rf"[ \t]*{quote}[se](\d+)[ \t]*", lambda m: m[0] if m[1] in paired else " ", text)
    breaks = re.compile(rf"[ \t]*(?:{br}[ \t]*)+") if br in text else None
    blocks: list[str] = []
    depth = 0
    for piece in re.split(r"[ \t]*(dataprepcode[0-9a-f]{16})[ \t]*", text):
        if piece in code:
            if code[piece].strip():
                blocks.append("```\n" + code[piece] + "\n```")  # verbatim: not quoted either
            continue
        lines = []
        for line in piece.splitlines():
            if quotes and line.strip().startswith(quote):
                depth = max(0, depth + (1 if line.strip()[len(quote)] == "s" else -1))
                lines.append("")
            else:
                lines += [("> " * depth + part).rstrip() if part else "" for part in _lines(line, breaks)]
        for block in re.split(r"\n\s*\n", "\n".join(lines)):
            block = "\n".join(line for line in block.splitlines() if line)
            if block and block.lstrip("> ") != "-":
                blocks.append(block)
    return blocks


# a nested list's items are indented by their level; other lines' leading spaces are the markup's
_LIST_ITEM = re.compile(r"[ \t]*(?:[-*+]|\d{1,9}[.)]) ")


def _lines(line: str, breaks: re.Pattern | None) -> list[str]:
    """A line of trafilatura's markdown as lines of a block, its <br> tokens put back. A list item
    keeps its indent (its level in a nested list), and its <br> lines stay in the item, indented
    under its text; a heading and a table row stay one line."""
    indent = line[:len(line) - len(line.lstrip(" "))] if _LIST_ITEM.match(line) else ""
    line = indent + _SPACES.sub(" ", line).strip()
    if breaks is None or not breaks.search(line):
        return [line]
    if line.startswith("|"):
        # "a / b" between a cell's lines ("Jane Doe / Manager", not "Jane Doe Manager"), nothing
        # at a cell's edge
        return [breaks.sub(lambda m: " " if line[m.start() - 1:m.start()] in ("|", "")
                           or line[m.end():m.end() + 1] in ("|", "") else " / ", line)]
    if line.startswith("#"):  # a heading wrapped by <br> is still one heading
        return [breaks.sub(" ", line).strip()]
    item = _LIST_ITEM.match(line)
    if item:  # two <br>s in a row too: a blank line would cut the list into two blocks
        return [part for part in breaks.sub("\n" + " " * item.end(), line).split("\n") if part.strip()]
    return [part.strip() for part in breaks.sub(lambda m: "\n\n" if m[0].count("dataprepbr") > 1 else "\n",
                                                line).split("\n")]


_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")


_XML_DECLARATION = re.compile(r"^\ufeff?\s*<\?xml[^>]*\?>")
_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.I)


def declared_decode(raw: bytes) -> str | None:
    """A page the source's encoding cannot decode, decoded by the charset it declares (a scraped
    site's windows-1252 or Shift_JIS), as browsers do: latin-1 and ASCII read as windows-1252."""
    import codecs

    m = _META_CHARSET.search(raw[:8192])
    if not m:
        return None
    name = m.group(1).decode("ascii").lower()
    name = "cp1252" if name in ("iso-8859-1", "latin1", "latin-1", "us-ascii", "ascii") else name
    try:
        return raw.decode(codecs.lookup(name).name)
    except (LookupError, UnicodeDecodeError):
        return None
