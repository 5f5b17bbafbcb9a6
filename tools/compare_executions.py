"""Compare the outputs of two sets of executed chapters (tables, displayed Markdown, printed lines).

    python tools/compare_executions.py BEFORE_DIR AFTER_DIR

Each ``*.ipynb`` in BEFORE_DIR is matched by name in AFTER_DIR; for each, the table rows (HTML
tables, one line per row), displayed Markdown and printed lines are extracted and a unified diff
of them is printed. Used for the before/after check of refactors: same configs, same numbers.
"""
import json, sys, re, difflib
from pathlib import Path
from html.parser import HTMLParser

class T(HTMLParser):
    def __init__(s): super().__init__(); s.rows=[]; s.cur=None; s.cell=None
    def handle_starttag(s,t,a):
        if t=="tr": s.cur=[]
        if t in("td","th"): s.cell=""
    def handle_endtag(s,t):
        if t in("td","th") and s.cur is not None: s.cur.append(s.cell.strip()); s.cell=None
        if t=="tr" and s.cur is not None: s.rows.append(" | ".join(s.cur)); s.cur=None
    def handle_data(s,d):
        if s.cell is not None: s.cell+=d

def outputs(path):
    nb=json.loads(Path(path).read_text()); out=[]
    for c in nb["cells"]:
        if c["cell_type"]!="code": continue
        for o in c.get("outputs",[]):
            d=o.get("data",{})
            if "text/html" in d and "<table" in "".join(d["text/html"]):
                p=T(); p.feed("".join(d["text/html"])); out += ["TABLE: "+r for r in p.rows]
            elif "text/markdown" in d:
                out += ["MD: "+l for l in "".join(d["text/markdown"]).splitlines() if l.strip()]
            elif o.get("output_type")=="stream" and o.get("name")=="stdout":
                out += ["OUT: "+l for l in "".join(o["text"]).splitlines() if l.strip()]
    return out

a,b=sys.argv[1],sys.argv[2]
for f in sorted(Path(a).glob("*.ipynb")):
    g=Path(b)/f.name
    if not g.exists(): print("## missing", f.name); continue
    A,B=outputs(f),outputs(g)
    same=sum(1 for x in A if x in set(B))
    print(f"## {f.name}: {len(A)} lines before, {len(B)} after, {same} before-lines found unchanged")
    for l in difflib.unified_diff(A,B,lineterm="",n=0):
        if l.startswith(("---","+++","@@")): continue
        print("  ", l[:260])
