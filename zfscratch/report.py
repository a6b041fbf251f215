"""The offline HTML report of ``zfscratch run``: ``OUT/index.html`` beside the figures.

The page needs nothing but the folder it sits in: no network, no script, no external style sheet
or font (the CSS is inline), images referenced by relative paths. Open it with any browser
(``file://``) or serve the folder (``python -m http.server -d report``).

Layout: a header (the command, data, profile, backend, total time), a table of contents with each
stage's status and time, the machine, then one section per stage -- the paper figure/table it
reproduces, two lines on what to look for, its figures and numbers, and a foldable block with the
stand-alone commands that redo it, its configuration, the backend and the timing.

Stages describe their content as *blocks* (``render(result, ctx) -> [block]``):

* ``("fig", path, caption)`` -- an image (path relative to the output folder);
* ``("table", header, rows)`` -- a table of strings/numbers;
* ``("kv", [(key, value), ...])`` -- a two-column list of facts;
* ``("text", str)``, ``("note", str)`` (highlighted), ``("pre", str)`` (preformatted).
"""
from __future__ import annotations

import html
import json
import os
import time

from zfscratch.io import atomic_write_text

CSS = """
:root { --fg: #1d232a; --muted: #5b6673; --line: #d9dee4; --bg: #ffffff; --panel: #f5f7f9; --accent: #2458a6;
        --ok: #1c7c3c; --warn: #a15c00; --bad: #b3261e; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: var(--fg); background: var(--bg); }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 80px; }
h1 { font-size: 1.7em; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.3em; margin: 0 0 0.3em; border-bottom: 1px solid var(--line); padding-bottom: 0.2em; }
h2 .paper { font-size: 0.7em; font-weight: normal; color: var(--muted); margin-left: 0.6em; }
section { margin: 34px 0; }
.sub { color: var(--muted); margin: 0 0 1em; }
.what { background: var(--panel); border-left: 4px solid var(--accent); padding: 8px 12px; margin: 0.6em 0 1em; }
.note { background: #fff7e6; border-left: 4px solid var(--warn); padding: 8px 12px; }
.error { background: #fdecea; border-left: 4px solid var(--bad); padding: 8px 12px; }
figure { margin: 12px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); image-rendering: pixelated; }
figcaption { color: var(--muted); font-size: 0.9em; margin-top: 4px; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 0.92em; }
th, td { border: 1px solid var(--line); padding: 3px 9px; text-align: left; vertical-align: top; }
th { background: var(--panel); }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { width: 16em; font-weight: 600; }
pre, code { font: 0.86em/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: var(--panel); border: 1px solid var(--line); padding: 8px 10px; overflow-x: auto; }
details { margin: 8px 0; }
summary { cursor: pointer; color: var(--accent); }
nav ol { columns: 2; padding-left: 1.4em; }
.status-done { color: var(--ok); } .status-reused { color: var(--ok); } .status-failed { color: var(--bad); }
.status-skipped, .status-not { color: var(--warn); }
footer { color: var(--muted); font-size: 0.85em; border-top: 1px solid var(--line); padding-top: 10px; }
"""


def esc(x):
    return html.escape("" if x is None else str(x), quote=True)


def _is_num(v):
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    s = str(v).strip().rstrip("%")
    try:
        float(s.replace(",", ""))
        return True
    except ValueError:
        return False


def safe_href(path):
    """A figure path as a link: relative, inside the report folder, no scheme (``javascript:``, ``data:``,
    ``http:``) -- a planted manifest cannot make the page run or fetch anything; "" otherwise."""
    p = str(path).strip().replace("\\", "/")
    first = p.split("/", 1)[0]
    if not p or ":" in first or p.startswith("/") or ".." in p.split("/") or any(ord(c) < 32 for c in p):
        return ""
    return p


def render_block(block):
    """One block (see the module docstring) -> HTML."""
    kind = block[0]
    if kind == "fig":
        _, path, caption = block
        if not path:
            return ""
        p = esc(safe_href(path))
        if not p:
            return ""
        return (f'<figure><a href="{p}"><img src="{p}" alt="{esc(caption or path)}" loading="lazy"></a>'
                f"<figcaption>{esc(caption)}</figcaption></figure>")
    if kind == "table":
        _, header, rows = block
        out = ["<table><thead><tr>", "".join(f"<th>{esc(h)}</th>" for h in header), "</tr></thead><tbody>"]
        for r in rows:
            out.append("<tr>" + "".join(f'<td class="num">{esc(c)}</td>' if _is_num(c) else f"<td>{esc(c)}</td>"
                                        for c in r) + "</tr>")
        out.append("</tbody></table>")
        return "".join(out)
    if kind == "kv":
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in block[1])
        return f'<table class="kv"><tbody>{rows}</tbody></table>'
    if kind == "text":
        return f"<p>{esc(block[1])}</p>"
    if kind == "note":
        return f'<p class="note">{esc(block[1])}</p>'
    if kind == "pre":
        return f"<pre>{esc(block[1])}</pre>" if block[1] else ""
    raise ValueError(f"unknown report block {kind!r}")


def _status(entry, last, optional=False):
    if not entry:
        return ("optional, not run" if optional else "not run"), "not"
    st = entry.get("status", "?")
    if st == "done":
        return ("reused" if last == "reused" else "computed"), ("reused" if last == "reused" else "done")
    return st, st.split()[0]


def stage_section(stage, entry, ctx, last=None):
    """The HTML section of one stage from its manifest entry."""
    label, cls = _status(entry, last, stage.optional)
    parts = [f'<section id="{esc(stage.name)}">',
             f'<h2>{esc(stage.title)}<span class="paper">{esc(stage.paper)}</span></h2>',
             f'<p class="what">{esc(stage.what)}</p>']
    res = (entry or {}).get("result") or {}
    if not entry or entry.get("status") in ("failed", "not run"):
        if not entry and stage.optional:
            parts.append(f'<p class="note">Optional section, not computed: add <code>--stages {esc(stage.name)}'
                         f'</code> to the <code>zfscratch run</code> command to compute it.</p>')
        else:
            err = (entry or {}).get("error") or "this stage has not been run yet (run `zfscratch run`)"
            parts.append(f'<p class="error">{esc(err)}</p>')
        if entry and entry.get("traceback"):
            parts.append(f"<details><summary>traceback</summary><pre>{esc(entry['traceback'])}</pre></details>")
    elif entry.get("status") == "skipped":
        parts.append(f'<p class="note">Skipped: {esc(res.get("skipped", ""))}</p>')
    else:
        try:
            blocks = stage.render(res, ctx) if stage.render else [("pre", json.dumps(res, indent=1))]
        except Exception as e:  # noqa: BLE001 - a rendering problem must not lose the report
            blocks = [("note", f"could not render this section ({type(e).__name__}: {e}); raw result below"),
                      ("pre", json.dumps(res, indent=1)[:20000])]
        parts.extend(render_block(b) for b in blocks)
    try:
        cmds = stage.commands(ctx, dict(stage.config)) if stage.commands else []
    except Exception:  # noqa: BLE001 - informative only
        cmds = []
    facts = [("status", label), ("backend", (entry or {}).get("backend", "")),
             ("time", f"{(entry or {}).get('seconds', 0.0):.1f} s wall, "
                      f"{(entry or {}).get('cpu_seconds', 0.0) or 0.0:.1f} s CPU (all threads)"),
             ("finished", (entry or {}).get("finished", "")), ("stage hash", (entry or {}).get("hash", ""))]
    det = ["<details><summary>command, configuration, backend and timing</summary>"]
    if cmds:
        det.append("<p>To redo this section alone:</p><pre>" + esc("\n".join(cmds)) + "</pre>")
    det.append("<p>Stage configuration:</p><pre>" + esc(json.dumps(stage.config, indent=1, sort_keys=True))
               + "</pre>")
    det.append(render_block(("kv", facts)))
    det.append("</details>")
    parts.extend(det)
    parts.append(f'<p class="sub status-{esc(cls)}">{esc(label)}, {esc(facts[2][1])}</p>')
    parts.append("</section>")
    return "\n".join(parts)


def build_html(manifest, stages, ctx):
    """The full page as a string."""
    st = manifest.get("stages", {})
    last = manifest.get("last_run", {})
    title = "Visualizing and Understanding Convolutional Networks, reproduced with zfscratch"
    toc = []
    timing_rows = []
    for s in stages:
        e = st.get(s.name)
        label, cls = _status(e, last.get(s.name), s.optional)
        secs = (e or {}).get("seconds", 0.0) or 0.0
        toc.append(f'<li><a href="#{esc(s.name)}">{esc(s.title)}</a> <span class="status-{esc(cls)}">'
                   f"({esc(label)}{'' if label in ('not run', 'optional, not run', 'skipped') else f', {secs:.1f} s'})</span></li>")
        cpu = (e or {}).get("cpu_seconds")
        timing_rows.append([s.name, s.paper, label, f"{secs:.1f}", "" if cpu is None else f"{cpu:.1f}",
                            (e or {}).get("backend", "")])
    computed = sum((st.get(s.name) or {}).get("seconds", 0.0) or 0.0 for s in stages)
    m = manifest.get("machine", {})
    head = [("command", manifest.get("command", "zfscratch run")),
            ("data", manifest.get("spec", "")),
            *([("model", f"{manifest['weights']} (--weights: nothing trained)")] if manifest.get("weights") else []),
            ("profile", f"{manifest.get('profile', '')}"
                        + (f" (options given: {', '.join(sorted(manifest['overrides']))})" if manifest.get("overrides") else "")),
            ("profile values", "; ".join(f"{k} = {', '.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                                         for k, v in (manifest.get("budget") or {}).items())),
            ("backend", m.get("backend", "")),
            ("this run took", f"{manifest.get('total_seconds', 0.0):.1f} s wall, "
                              f"{manifest.get('total_cpu_seconds', 0.0) or 0.0:.1f} s CPU (stages reused from "
                              "earlier runs take no time)"),
            ("compute time of all sections", f"{computed:.1f} s"),
            ("generated", manifest.get("finished", time.strftime("%Y-%m-%d %H:%M:%S")))]
    machine = [(k, v) for k, v in m.items()]
    body = [f"<h1>{esc(title)}</h1>",
            '<p class="sub">Zeiler &amp; Fergus (2014) on a from-scratch NumPy/Numba/CuPy engine. Every number and '
            "figure below was computed by the command shown, on this machine; the page works offline.</p>",
            render_block(("kv", head)),
            (render_block(("note", manifest["budget_note"])) if manifest.get("budget_note") else ""),
            "<nav><h2>Sections</h2><ol>" + "".join(toc) + "</ol></nav>",
            '<section id="timing"><h2>Backend and timings</h2>',
            render_block(("table", ["stage", "paper", "status", "wall s", "CPU s", "backend"], timing_rows)),
            render_block(("kv", machine)),
            '<p class="sub">Rerunning <code>zfscratch run</code> reuses every finished section whose configuration '
            "and inputs are unchanged (see <code>manifest.json</code>); <code>--force</code> recomputes all.</p>",
            "</section>"]
    for s in stages:
        body.append(stage_section(s, st.get(s.name), ctx, last.get(s.name)))
    body.append("<footer>zfscratch " + esc(m.get("zfscratch", "")) + " &middot; manifest: "
                '<a href="manifest.json">manifest.json</a></footer>')
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
            + "\n".join(body) + "\n</main>\n</body>\n</html>\n")


def write_report(out, manifest, stages, ctx):
    """Write ``OUT/index.html`` atomically; returns its path."""
    path = os.path.join(os.fspath(out), "index.html")
    atomic_write_text(path, build_html(manifest, stages, ctx))
    return path
