#!/usr/bin/env python3
"""The `use crate::` graph of each crate: module -> the modules of its crate it imports
(comments and #[cfg(test)] code left out), and any pair that imports each other.
Run from the repository root: python3 tools/module-graph.py"""
import os, re, sys, collections
def modname(crate_src, path):
    rel = os.path.relpath(path, crate_src)[:-3]
    parts = rel.split(os.sep)
    if parts[-1] in ("mod", "lib", "main"): parts = parts[:-1]
    return "::".join(parts) or "crate"
for crate in sorted(os.listdir("crates")):
    src = f"crates/{crate}/src"
    if not os.path.isdir(src): continue
    mods = {}
    for root, _, files in os.walk(src):
        for f in files:
            if f.endswith(".rs"): mods[modname(src, os.path.join(root, f))] = os.path.join(root, f)
    edges = collections.defaultdict(set)
    for m, path in mods.items():
        text = open(path).read()
        text = text.split("#[cfg(test)]")[0]
        text = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("//"))
        for target in re.findall(r"use crate::([a-z_:]+)", text) + re.findall(r"crate::([a-z_]+(?:::[a-z_]+)*)::", text):
            parts = target.split("::")
            # the longest prefix that is a module
            for n in range(len(parts), 0, -1):
                cand = "::".join(parts[:n])
                if cand in mods:
                    if cand != m and not m.startswith(cand + "::") and not cand.startswith(m + "::"):
                        edges[m].add(cand)
                    break
    print(f"## {crate}")
    for m in sorted(edges): print(f"  {m} -> {', '.join(sorted(edges[m]))}")
    cycles = [(a, b) for a in edges for b in edges[a] if a in edges.get(b, ()) and a < b]
    print(f"  cycles (a module importing one that imports it back): {cycles or 'none'}")
