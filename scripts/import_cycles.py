#!/usr/bin/env python3
"""Import cycles among the crate's modules and the JS modules (issue 29 item 12).

Run from anywhere: `python3 scripts/import_cycles.py [--strict]` (standard library only). It
prints each strongly connected component of more than one module with a cycle through each of
its modules and the file, line and path of every edge on it, and exits 1; with none it prints
one line and exits 0.

Rust: each file is a module (`foo.rs` and `foo/mod.rs` are `foo`). The library is rooted at
`src/lib.rs`; each binary under `src/bin/` (its `main.rs`) is a crate of its own (`crate::` is that binary,
`webvlm::` paths are external there). A module depends on what its `use` declarations and its
`crate::`, `super::`, `self::`, child-module and imported-name paths name: a path goes to the
deepest module file it walks through, following `use`/`pub use` imports to the module that
defines the item (`super::HfError`, re-exported by `hf/mod.rs`, is an edge to `hf/error.rs`).
A module's edges into its own subtree are not counted: `mod child;`, `pub use child::X` and
calls into a child make a parent the facade of its children, and a child may use its parent's
items; so a cycle needs an edge across branches (siblings that use each other, `error.rs` and
`engine/mod.rs`). `--strict` counts those edges too (a parent that uses a child whose file
uses the parent's items is then a cycle). Code under `#[cfg(test)]` (or `all(test, ...)`) is
left out, test-only module files included; comments and string literals do not count.

JS: the files in `js/`, `www/` and `www/js/`; edges are `import`/`export ... from` and
`import("...")` of a relative path to one of those files.
"""
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IDENT = r"[A-Za-z_]\w*"


def blank(m):
    """A match's text as spaces, its newlines kept (line numbers stay right)."""
    return re.sub(r"[^\n]", " ", m.group())


def strip_rust(src):
    """Comments and string/char literals blanked (block comments do not nest here)."""
    return re.sub(r"""//[^\n]*|/\*.*?\*/|(?<!\w)b?r(#*)".*?"\1|"(?:\\.|[^"\\])*"|'(?:\\.[^']*|[^'\\])'""", blank, src, flags=re.S)


def drop_test_items(text):
    """Removes every item under a `#[cfg(test)]`-like attribute (to its `;` or closing brace)."""
    while m := re.search(r"#\[cfg\((all\()?test\b", text):
        j = re.compile(r"(\s*#\[[^\]]*\])*\s*").match(text, m.start()).end()
        is_use = re.compile(r"(pub(\([^)]*\))?\s+)?use\b").match(text, j)
        depth = 0
        while j < len(text):
            ch = text[j]
            depth += (ch in "{([") - (ch in "})]")
            j += 1
            if depth == 0 and (ch == ";" or (ch == "}" and not is_use)):
                break
        text = text[: m.start()] + re.sub(r"[^\n]", " ", text[m.start() : j]) + text[j:]
    return text


def use_tree(tree, prefix=()):
    """`a::{b, c::d as e, self}` -> [(path, local name)]; a glob's name is `*`."""
    tree = re.sub(r"\s+", "", re.sub(r"\s+as\s+", "@", tree)).lstrip(":")
    if "{" not in tree:
        path, _, alias = tree.partition("@")
        segs = prefix + tuple(s for s in path.split("::") if s)
        if segs and segs[-1] == "self":
            segs = segs[:-1]
        return [(segs, alias or (segs[-1] if segs else ""))] if segs else []
    head, rest = tree.split("{", 1)
    prefix += tuple(s for s in head.split("::") if s)
    parts, depth, cur = [], 0, ""
    for ch in rest[:-1]:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += (ch == "{") - (ch == "}")
        cur += ch
    return [u for p in parts + [cur] if p for u in use_tree(p, prefix)]


def rust_crate(crate_dir, root, label, files, strict=False):
    """Edges between the module files of one crate: {modpath: {target: (line, path text)}}."""
    mods = {}
    for f in files:
        rel = f.relative_to(crate_dir).with_suffix("").parts
        mods[() if f == root else rel[:-1] if rel[-1] == "mod" else rel] = f
    texts, uses, use_refs, test_only = {}, {}, {}, set()
    for mp, f in mods.items():
        raw = f.read_text()
        for attrs, name in re.findall(r"((?:#\[[^\]]*\]\s*)+)(?:pub(?:\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*;", raw):
            if re.search(r"cfg\((all\()?test\b", attrs):
                p = re.search(r'path\s*=\s*"([^"]+)"', attrs)
                test_only.add((f.parent / p.group(1)).resolve() if p else mp + (name,))
        text = drop_test_items(strip_rust(raw))
        uses[mp], use_refs[mp] = {}, []
        for um in re.finditer(r"\buse\s+([^;]*);", text):
            for segs, name in use_tree(um.group(1)):
                uses[mp][name] = segs
                use_refs[mp].append((text.count("\n", 0, um.start()) + 1, "use " + um.group(1), segs))
        texts[mp] = re.sub(r"\buse\s+[^;]*;", blank, text)
    mods = {mp: f for mp, f in mods.items() if mp not in test_only and f.resolve() not in test_only}

    def absolute(mp, segs):
        head = segs[0]
        if head == "crate":
            return segs[1:]
        if head in ("self", "super"):
            ups = len(segs) - len(tuple(s for s in segs if s != "super"))
            return mp[: max(len(mp) - ups, 0)] + tuple(s for s in segs if s not in ("self", "super"))
        if mp + (head,) in mods:
            return mp + segs
        if head in uses.get(mp, {}) and head != "*":
            imported = absolute(mp, uses[mp][head]) if uses[mp][head][0] != head else None
            return None if imported is None else imported + segs[1:]
        return None

    def resolve(path, seen=frozenset()):
        cur = ()
        for i, seg in enumerate(path):
            if cur + (seg,) in mods:
                cur += (seg,)
                continue
            imported = uses.get(cur, {}).get(seg)
            if imported and (cur, seg) not in seen and (a := absolute(cur, imported)) is not None:
                return resolve(a + path[i + 1 :], seen | {(cur, seg)})
            break
        return cur

    graph = {}
    for mp in mods:
        refs = list(use_refs[mp])
        for m in re.finditer(r"(?<![\w:$])" + IDENT + r"(?:\s*::\s*" + IDENT + ")+", texts[mp]):
            segs = tuple(re.sub(r"\s+", "", m.group()).split("::"))
            refs.append((texts[mp].count("\n", 0, m.start()) + 1, m.group(), segs))
        edges = graph.setdefault(f"{label}{'::'.join(mp) or 'crate'}", {})
        for line, text, segs in sorted(refs):
            if (a := absolute(mp, segs)) is not None and (t := resolve(a)) in mods and t != mp and (strict or t[: len(mp)] != mp):
                edges.setdefault(f"{label}{'::'.join(t) or 'crate'}", (line, re.sub(r"\s+", " ", text)))
    return graph, {f"{label}{'::'.join(mp) or 'crate'}": mods[mp] for mp in mods}


def js_graph():
    files = sorted({*REPO.glob("js/*.js"), *REPO.glob("www/*.js"), *REPO.glob("www/js/*.js")})
    graph = {}
    for f in files:
        text = re.sub(r"/\*.*?\*/|^[ \t]*//[^\n]*", blank, f.read_text(), flags=re.S | re.M)
        edges = graph.setdefault(str(f.relative_to(REPO)), {})
        pat = r"""\b(?:import|export)\b[^;'"]*?\bfrom\s*["']([^"']+)["']|\bimport\s*\(?\s*["']([^"']+)["']"""
        for m in re.finditer(pat, text):
            target = (f.parent / (m.group(1) or m.group(2))).resolve()
            if target in files:
                edges.setdefault(str(target.relative_to(REPO)), (text.count("\n", 0, m.start()) + 1, m.group()))
    return graph, {name: REPO / name for name in graph}


def components(graph):
    """Tarjan's strongly connected components."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on.discard(comp[-1])
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def shortest_cycle(graph, comp, start):
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return path[::-1] + [start]
                if w in comp and w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt


def main():
    strict = "--strict" in sys.argv[1:]
    lib = sorted(f for f in (REPO / "src").rglob("*.rs") if f.relative_to(REPO / "src").parts[0] != "bin")
    rust, files = rust_crate(REPO / "src", REPO / "src/lib.rs", "", lib, strict)
    for main_rs in sorted((REPO / "src/bin").glob("*/main.rs")):
        g, fl = rust_crate(main_rs.parent, main_rs, f"bin/{main_rs.parent.name}:", sorted(main_rs.parent.rglob("*.rs")), strict)
        rust.update(g)
        files.update(fl)
    js, js_files = js_graph()
    files.update(js_files)
    graph = {**rust, **js}
    cycles = [c for c in components(graph) if len(c) > 1]
    for comp in cycles:
        print(f"import cycle among {len(comp)} modules: {', '.join(comp)}")
        shown = set()
        for path in (shortest_cycle(graph, set(comp), start) for start in comp if start not in shown):
            shown.update(path)
            print("  " + " -> ".join(path))
            for a, b in zip(path, path[1:]):
                print(f"    {files[a].relative_to(REPO)}:{graph[a][b][0]}: {graph[a][b][1]}")
    if cycles:
        return 1
    print(f"no import cycles among {len(rust)} Rust modules and {len(js)} JS modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
