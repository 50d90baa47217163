"""html_text on the shapes a page's markup takes: line breaks, code blocks, tables, lists and quotes
as a reader sees them."""
from dataprep.html import html_text


def page(body: str) -> str:
    return f'<html><head><meta charset="utf-8"></head><body><article>{body}</article></body></html>'


def test_a_line_break_stays_in_its_block_and_two_end_it():
    """A forum post's lines and an address are one block each (they were a block per line), the
    post's <br><br> ends a block, and the heading stays above the post (it came after it)."""
    blocks = html_text(page(
        '<h2>Re: printer not working</h2><div class="post">Hi all,<br>I tried restarting the spooler.<br>'
        'Then I reinstalled the driver.<br>Still nothing prints.<br><br>Any ideas?<br>Thanks, Bob</div>'
        '<p>Shipping address:<br>Jane Doe<br>12 Main Street<br>Springfield</p>'))
    assert blocks == ["## Re: printer not working",
                      "Hi all,\nI tried restarting the spooler.\nThen I reinstalled the driver.\nStill nothing prints.",
                      "Any ideas?\nThanks, Bob",
                      "Shipping address:\nJane Doe\n12 Main Street\nSpringfield"]


def test_line_breaks_in_a_table_a_heading_a_list_and_code():
    """A row stays one line ("a / b" between a cell's lines), a heading one heading, a list item's
    lines stay in the item, and a quote's in the quote; whitespace between two <br>s still ends a
    block; in <pre> a <br> is a newline."""
    blocks = html_text(page(
        '<h2>Chapter 1<br>The start</h2><p>First paragraph of the page.</p>'
        '<table><tr><th>Name</th><th>Contact</th></tr><tr><td>Jane Doe<br>Manager</td><td><br>jane@example.com<br></td></tr></table>'
        '<ul><li>line one<br>line two<ul><li>sub<br>sub two</li></ul></li></ul>'
        '<blockquote>Quoted first.<br>Same paragraph.</blockquote>'
        '<p>stanza one<br>\n  <br>\nstanza two</p><pre>a = 1<br>b = 2</pre>'))
    assert blocks == ["## Chapter 1 The start", "First paragraph of the page.",
                      "| Name | Contact |\n|---|---|\n| Jane Doe / Manager | jane@example.com |",
                      "- line one\n  line two\n  - sub\n    sub two", "> Quoted first.\n> Same paragraph.",
                      "stanza one", "stanza two", "```\na = 1\nb = 2\n```"]


def test_code_blocks_keep_their_tabs_blank_lines_and_place():
    """A Makefile's recipe keeps its tab (it was 8 spaces, which make refuses); a common indent is
    still stripped, blank lines between functions are kept, a block in a list item stays whole."""
    blocks = html_text(page(
        '<p>The Makefile and the code:</p><pre>all: build\n\tgo build ./...\n</pre>'
        '<pre>\tfunc main() {\n\t\trun()\n\t}</pre>'
        '<pre>    def f():\n        pass\n\n\n    def g():\n        pass\n</pre>'
        '<ul><li>Run it:<pre>  make all\n  make test</pre></li></ul><p>Use <code>go vet</code> too.</p>'))
    assert blocks == ["The Makefile and the code:", "```\nall: build\n\tgo build ./...\n```",
                      "```\nfunc main() {\n\trun()\n}\n```",
                      "```\ndef f():\n    pass\n\n\ndef g():\n    pass\n```",
                      "- Run it:", "```\nmake all\nmake test\n```", "Use `go vet` too."]


def test_a_pipe_in_a_table_cell_stays_escaped():
    """"Pear | special" is one cell (it read as two: the row had three cells under two headers); a
    pipe in prose is the author's, and so is a backslash before one."""
    blocks = html_text(page(
        '<p>Prices this week.</p><table><tr><th>Fruit</th><th>Price</th></tr>'
        '<tr><td>Pear | special</td><td>2.50</td></tr></table><p>Run a | b, or escape it as \\| in a regex.</p>'))
    assert blocks == ["Prices this week.", "| Fruit | Price |\n|---|---|\n| Pear \\| special | 2.50 |",
                      "Run a | b, or escape it as \\| in a regex."]


def test_nested_lists_keep_their_levels_and_quotes_their_marks():
    """A nested item is indented two spaces a level (it sat at its parent's level), a quote's lines
    start with "> " (nested: "> > "; it had none); a quote inside a list item or a table cell is run
    into the text, without marks."""
    blocks = html_text(page(
        '<p>Lists and quotes here.</p>'
        '<ul><li>top a<ul><li>nested a</li><li>nested b<ol><li>deep one</li><li>deep two</li></ol></li></ul></li>'
        '<li>top b</li></ul>'
        '<blockquote>Quoted first, bare in the quote.<blockquote><p>Quoted in a quote.</p></blockquote>'
        '<ul><li>quoted item<ul><li>quoted sub</li></ul></li></ul></blockquote><p>After the quotes.</p>'
        '<ul><li>an item<blockquote>quoted in it</blockquote></li></ul>'
        '<table><tr><td>cell</td><td><blockquote>quoted in a cell</blockquote></td></tr></table>'))
    assert blocks == ["Lists and quotes here.",
                      "- top a\n  - nested a\n  - nested b\n    1. deep one\n    2. deep two\n- top b",
                      "> Quoted first, bare in the quote.", "> > Quoted in a quote.",
                      "> - quoted item\n>   - quoted sub", "After the quotes.",
                      "- an item quoted in it", "| cell | quoted in a cell |"]


def test_inline_marks_footnotes_and_permalinks_as_before():
    blocks = html_text(page(
        '<h2>Speed of light<a class="headerlink" href="#speed">¶</a></h2>'
        '<p>It is 3 × 10<sup>8</sup> m/s; set <code>c = 3e8</code> in <em>units</em>.<a href="#fn1">[1]</a></p>'
        '<aside role="doc-footnote" id="fn1"><p>[1] Rounded from 299 792 458 m/s.</p></aside>'))
    assert blocks == ["## Speed of light", "It is 3 × 10^8 m/s; set `c = 3e8` in *units*.[1]",
                      "[1] Rounded from 299 792 458 m/s."]
