#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a cycle.

Usage: scripts/check-module-cycles.py [SRC_DIR ...]   (default: crates/*/src)

An edge A -> B is an import of module file B by module file A, from the paths A names:
`crate::x::y` (in `use` lines, `use crate::x::{a, b::c}` groups and inline paths) and `super::x`
(resolved from A's own module path). A path is resolved to the longest module file it names
(`crate::server::tls::CA_FILE` -> `server/tls.rs`). Not counted: a parent naming its own children
by a bare relative path (`pub use listener::Limits` in `server/mod.rs`) — declaring and
re-exporting children is the module tree, not an import — and everything after the first
`#[cfg(test)]` of a file (tests may read anything). `src/main.rs` and `src/bin/*` are leaves.

Prints each cycle (a strongly connected set of files) and exits 1 if there is any.
"""

import glob
import os
import re
import sys

PATH = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
GROUP = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{")


def module_files(src):
    """Module path (tuple of names) -> file, for one crate's source directory."""
    files = {}
    for path in glob.glob(os.path.join(src, "**", "*.rs"), recursive=True):
        rel = os.path.relpath(path, src)[:-3].split(os.sep)
        if rel[0] == "bin" or rel == ["main"]:
            continue
        if rel[-1] == "mod":
            rel = rel[:-1]
        if rel == ["lib"]:
            rel = []
        files[tuple(rel)] = path
    return files


def group_items(text, start):
    """The top-level items of a `{...}` group starting at `start` (just after the brace), with
    nested groups flattened into `prefix::item` paths."""
    depth, item, items, i = 1, "", [], start
    stack = [""]
    while i < len(text) and depth > 0:
        c = text[i]
        if c == "{":
            stack.append(stack[-1] + item.strip())
            item = ""
            depth += 1
        elif c == "}":
            if item.strip():
                items.append(stack[-1] + item.strip())
            item = ""
            stack.pop()
            depth -= 1
        elif c == ",":
            if item.strip():
                items.append(stack[-1] + item.strip())
            item = ""
        else:
            item += c
        i += 1
    return items


def targets(module, text):
    """Every module path (possibly too long: items follow modules) the text names."""
    def absolute(root, rest):
        parts = [p for p in rest.split("::") if p]
        if root == "crate":
            return parts
        base = list(module)
        up = 1
        while parts and parts[0] == "super":
            parts, up = parts[1:], up + 1
        return base[: max(len(base) - up, 0)] + parts

    out = []
    for m in PATH.finditer(text):
        out.append(absolute(m.group(1), m.group(2)))
    for m in GROUP.finditer(text):
        base = absolute(m.group(1), m.group(2))
        for item in group_items(text, m.end()):
            name = item.split(" as ")[0].strip()
            if name == "self":
                out.append(base)
            elif name and name != "*":
                out.append(base + [p for p in name.split("::") if p and p != "self"])
    return out


def resolve(files, path):
    parts = tuple(path)
    while parts and parts not in files:
        parts = parts[:-1]
    return parts if parts in files else None


def cycles(files):
    edges = {m: set() for m in files}
    for module, path in files.items():
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read().split("#[cfg(test)]")[0]
        # Comments name paths too (`[`crate::store::Store`]` in docs): only code counts.
        text = re.sub(r"//[^\n]*", "", text)
        for t in targets(module, text):
            r = resolve(files, t)
            if r is not None and r != module and r != ():
                edges[module].add(r)
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def strong(v):
        # Iterative Tarjan: deep module trees must not hit Python's recursion limit.
        work = [(v, iter(sorted(edges[v])))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    advanced = True
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    found.append(sorted("::".join(x) for x in comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return found


def self_test():
    """The check must be able to fail: a two-file cycle through a group, a `super::` path and a
    nested group are found; the same tree without the back edge is clean."""
    import tempfile

    def tree(files):
        d = tempfile.mkdtemp()
        for name, text in files.items():
            os.makedirs(os.path.dirname(os.path.join(d, name)), exist_ok=True)
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        return module_files(d)

    base = {
        "lib.rs": "pub mod a;\npub mod b;\npub mod c;\n",
        "a.rs": "use crate::{b::{Thing, other::Deep}, c};\n",
        "b/mod.rs": "pub mod other;\npub use other::Deep;\n",
        "b/other.rs": "pub struct Deep;\n",
        "c.rs": "pub fn f() {}\n#[cfg(test)]\nmod tests { use crate::a::X; }\n",
    }
    assert cycles(tree(base)) == [], "clean tree reported a cycle"
    looped = dict(base, **{"b/other.rs": "use super::super::a::Y;\n"})
    assert cycles(tree(looped)) == [["a", "b::other"]], cycles(tree(looped))
    commented = dict(base, **{"c.rs": "//! See [`crate::a::X`].\n"})
    assert cycles(tree(commented)) == [], "a path in a comment counted as an import"
    print("check-module-cycles self-test: ok")


def main():
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return 0
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    srcs = sys.argv[1:] or sorted(glob.glob(os.path.join(root, "crates", "*", "src")))
    total = 0
    for src in srcs:
        found = cycles(module_files(src))
        total += len(found)
        for c in found:
            print(f"{os.path.relpath(src, root)}: module cycle: {', '.join(c)}")
    print(f"module cycles: {total} in {len(srcs)} crate(s)")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
