#!/usr/bin/env python3
"""Fails when two source files of one crate import each other, directly or through others.

An edge A -> B means file A names an item of module B by path (`use crate::b::..`,
`crate::b::X`, `super::b`, `self::b`), in code or in a doc comment's link (a doc that points
back at its user ties the two files as much as an import); `mod b;` declarations are not
imports. Plain comments and `#[cfg(test)]` modules at the end of a file are ignored: test
code may reach anywhere. A
cycle is a strongly connected component of more than one file.

Usage: scripts/check-import-cycles.py [ROOT]   (ROOT defaults to the repository)
"""
import os
import re
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP = re.compile(r"\buse\s+(crate|super|self)::\{([^;]*)\};", re.S)


def crate_roots(root):
    for top in ("crates", "harness"):
        base = os.path.join(root, top)
        if os.path.isdir(base):
            for name in sorted(os.listdir(base)):
                src = os.path.join(base, name, "src")
                if os.path.isdir(src):
                    yield src
    for top in ("src", os.path.join("kernel", "src")):
        if os.path.isdir(os.path.join(root, top)):
            yield os.path.join(root, top)


def module_of(src, path):
    """Module path (list of names) of a file under src."""
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("lib", "main", "mod"):
        rel = rel[:-1]
    return rel


def file_of(src, module):
    """The deepest existing file that defines a prefix of `module`."""
    for n in range(len(module), -1, -1):
        parts = module[:n]
        if not parts:
            for root_file in ("lib.rs", "main.rs"):
                if os.path.exists(os.path.join(src, root_file)):
                    return os.path.join(src, root_file)
            return None
        for cand in (os.path.join(src, *parts) + ".rs", os.path.join(src, *parts, "mod.rs")):
            if os.path.exists(cand):
                return cand
    return None


def strip(text):
    # Plain comments go; doc comments (`///`, `//!`) stay, for their links.
    text = re.sub(r"(?<![/:])//(?![/!])[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    m = re.search(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", text)
    return text[: m.start()] if m else text


def edges(src, path):
    text = strip(open(path, encoding="utf-8").read())
    here = module_of(src, path)
    is_dir_module = os.path.basename(path) in ("mod.rs", "lib.rs", "main.rs")
    paths = [(m.group(1), m.group(2)) for m in PATH.finditer(text)]
    for m in USE_GROUP.finditer(text):
        for item in m.group(2).split(","):
            item = item.strip().split("::")[0].split(" ")[0]
            if re.match(r"^[A-Za-z_]\w*$", item):
                paths.append((m.group(1), "::" + item))
    out = set()
    for anchor, rest in paths:
        names = rest.split("::")[1:]
        if anchor == "crate":
            module = names
        else:
            base = here if is_dir_module else here[:-1]
            if anchor == "super":
                base = base[:-1]
            module = base + names
        target = file_of(src, module)
        # The crate root re-exports its modules' items: `crate::Item` names the module that
        # defines it, not the root, so an edge to the root says nothing.
        if target and os.path.basename(target) in ("lib.rs", "main.rs") and len(module) > 0:
            continue
        if target and os.path.abspath(target) != os.path.abspath(path):
            out.add(os.path.abspath(target))
    return out


def sccs(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def main():
    root = os.path.abspath(ROOT)
    bad, files = [], 0
    for src in crate_roots(root):
        graph = {}
        for dirpath, _, names in os.walk(src):
            for name in names:
                if name.endswith(".rs"):
                    path = os.path.abspath(os.path.join(dirpath, name))
                    graph[path] = edges(src, path)
                    files += 1
        for comp in sccs(graph):
            if len(comp) > 1:
                bad.append(sorted(os.path.relpath(p, root) for p in comp))
    for comp in bad:
        print("import cycle: " + " <-> ".join(comp))
    print(f"{files} files checked, {len(bad)} import cycles")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
