#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a cycle.

For every crate of the workspace (each Cargo.toml with a [package] and a
src/ folder) and every target root in it (src/lib.rs, src/main.rs,
src/bin/*.rs, src/bin/*/main.rs), the script reads the module tree the way
rustc does (`mod foo;` -> foo.rs or foo/mod.rs, inline `mod foo { .. }`,
`#[path = ".."]`) and collects what each module refers to:

- `use` declarations, `pub use` and `pub(crate) use` alike, grouped ones
  (`use crate::{a, b::{c, d}}`), renames and globs (`use super::*`);
- paths in code: `crate::a::f()`, `super::b::T`, `self::c::X`, and paths
  that start with a child module or a name a `use` brought in.

A path is followed to the module that defines the item: through the
modules it names, then through the `use`/`pub use` bindings of the module it
reaches (`crate::Handle`, re-exported by lib.rs from `engine`, is a
reference to `engine`), glob re-exports included.

The check is between siblings, at every level of the tree: module A
depends on its sibling B when code anywhere under A refers to anything
under B. A cycle among the children of one module (`engine -> ublk ->
engine`, or a longer ring) is reported with the reference that makes each
step. A module and its own children are not compared (a parent declares and
re-exports its children; children use what their parent defines).

Test code does not count: a module or item under `#[cfg(test)]` (or a cfg
that needs `test`) is skipped with everything in it; test modules
legitimately import their parent and whatever they test.

Usage: scripts/check-module-cycles.py [ROOT]   (ROOT: the workspace, default
the parent of this script's folder). Exit status 1 when a cycle is found.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field

# ---------------------------------------------------------------------------
# Lexing: comments out, string and char literals blanked (kept by position
# so that `#[path = "..."]` can still be read).


def strip_source(src: str) -> tuple[str, dict[int, str]]:
    """`src` with comments replaced by spaces and the contents of string
    and char literals blanked; newlines are kept so offsets and line numbers
    stay. Returns the text and {offset of opening quote: literal content}."""
    out: list[str] = []
    strings: dict[int, str] = {}
    i, n = 0, len(src)

    def blank(s: str) -> str:
        return "".join("\n" if c == "\n" else " " for c in s)

    while i < n:
        c = src[i]
        nxt = src[i + 1] if i + 1 < n else ""
        if c == "/" and nxt == "/":
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(blank(src[i:j]))
            i = j
        elif c == "/" and nxt == "*":
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(blank(src[i:j]))
            i = j
        elif c in "rb" and _raw_string_at(src, i):
            j = i + 1 if c == "r" else i + 2  # after r / br
            hashes = 0
            while src[j] == "#":
                hashes, j = hashes + 1, j + 1
            end = src.find('"' + "#" * hashes, j + 1)
            end = n if end < 0 else end
            strings[j] = src[j + 1 : end]
            close = min(n, end + 1 + hashes)
            out.append(src[i : j + 1] + blank(src[j + 1 : end]) + src[end:close])
            i = close
        elif c == '"' or (c == "b" and nxt == '"' and not _ident_before(src, i)):
            start = i if c == '"' else i + 1
            j = start + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            strings[start] = src[start + 1 : j]
            out.append(src[i : start + 1] + blank(src[start + 1 : j]))
            i = j  # the closing quote is copied by the next round
            if i < n:
                out.append('"')
                i += 1
        elif c == "'":
            m = re.match(r"'(?:\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]+\}|.)|[^\\'\n])'", src[i:])
            if m:
                out.append("'" + " " * (len(m.group(0)) - 2) + "'")
                i += len(m.group(0))
            else:  # a lifetime or a label
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out), strings


def _ident_before(src: str, i: int) -> bool:
    return i > 0 and (src[i - 1].isalnum() or src[i - 1] == "_")


def _raw_string_at(src: str, i: int) -> bool:
    if _ident_before(src, i):
        return False
    m = re.match(r"b?r#*\"", src[i:])
    return m is not None


# ---------------------------------------------------------------------------
# Items at the top level of a module body.

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
ATTR_RE = re.compile(r"#\s*\[")
CFG_TEST_RE = re.compile(r"^\s*cfg\s*\((.*)\)\s*$", re.S)


def match_close(text: str, i: int) -> int:
    """Offset just after the bracket that closes the one at `i`."""
    pairs = {"{": "}", "(": ")", "[": "]"}
    stack = [pairs[text[i]]]
    j = i + 1
    while j < len(text) and stack:
        c = text[j]
        if c in pairs:
            stack.append(pairs[c])
        elif stack and c == stack[-1]:
            stack.pop()
        j += 1
    return j


def cfg_needs_test(attr_body: str) -> bool:
    """Whether `cfg(...)` holds only in test builds: `test` appears and not
    under `not(...)` (`cfg(not(test))` is production code)."""
    m = CFG_TEST_RE.match(attr_body)
    if not m:
        return False
    pred = m.group(1)
    if not re.search(r"\btest\b", pred) or pred.strip().startswith("any"):
        return False
    return not re.search(r"\bnot\s*\([^()]*\btest\b", pred) or bool(
        re.fullmatch(r"\s*test\s*", pred)
    )


@dataclass
class Item:
    start: int  # first attribute
    body_start: int  # first token after the attributes
    end: int
    attrs: list[str]


def items(text: str) -> list[Item]:
    """The items at brace depth 0 of `text`, with their attributes."""
    out: list[Item] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t\r\n;":
            i += 1
        if i >= n:
            break
        start = i
        attrs: list[str] = []
        while True:
            m = ATTR_RE.match(text, i)
            if not m:
                break
            if text[i + 1] == "!":
                break
            close = match_close(text, m.end() - 1)
            attrs.append(text[m.end() : close - 1])
            i = close
            while i < n and text[i] in " \t\r\n":
                i += 1
        if text.startswith("#!", i):  # inner attribute: skip it
            k = text.find("[", i)
            i = match_close(text, k)
            continue
        body_start = i
        end = item_end(text, i)
        out.append(Item(start, body_start, end, attrs))
        i = max(end, i + 1)
    return out


def item_end(text: str, i: int) -> int:
    """End of the item starting at `i`: its `;` or its closing brace (a
    `use a::{b, c};` ends at the semicolon)."""
    is_use = re.match(r"(pub(\s*\([^)]*\))?\s+)?use\b", text[i:]) is not None
    j, n = i, len(text)
    while j < n:
        c = text[j]
        if c in "([" or (c == "{" and is_use):
            j = match_close(text, j)
            continue
        if c == ";":
            return j + 1
        if c == "{":
            return match_close(text, j)
        j += 1
    return n


# ---------------------------------------------------------------------------
# Use trees.

USE_RE = re.compile(r"^(?:pub\s*(?:\([^)]*\))?\s+)?use\s+(.*);\s*$", re.S)


def parse_use_tree(s: str, prefix: list[str]) -> list[tuple[list[str], str | None]]:
    """Leaves of a use tree: (full path, bound name). A glob has the name
    '*'; `self` in a group binds the prefix's last segment; `_` binds
    nothing."""
    out: list[tuple[list[str], str | None]] = []
    for part in split_top(s):
        part = part.strip()
        if not part:
            continue
        m = re.match(r"^(.*?)::\s*\{(.*)\}$", part, re.S)
        if m or part.startswith("{"):
            head = m.group(1) if m else ""
            inner = m.group(2) if m else part.strip()[1:-1]
            segs = [x.strip() for x in head.split("::") if x.strip()]
            segs = [x for x in segs if x]
            out.extend(parse_use_tree(inner, prefix + segs))
            continue
        alias = None
        am = re.match(r"^(.*)\s+as\s+(" + IDENT + r")$", part, re.S)
        if am:
            part, alias = am.group(1).strip(), am.group(2)
        segs = [x.strip() for x in part.split("::") if x.strip()]
        if segs and segs[0] == "":
            segs = segs[1:]
        path = prefix + segs
        if segs == ["self"]:
            path = prefix
            name = alias or (prefix[-1] if prefix else None)
        elif segs and segs[-1] == "*":
            name = "*"
        else:
            name = alias or (segs[-1] if segs else None)
        if name == "_":
            name = None
        out.append((path, name))
    return out


def split_top(s: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for c in s:
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return parts


# ---------------------------------------------------------------------------
# The module tree.


@dataclass
class Module:
    path: tuple[str, ...]
    file: str
    line: int
    children: dict[str, "Module"] = field(default_factory=dict)
    # name -> target path (a `use` binding); "*" entries in globs
    bindings: dict[str, list[str]] = field(default_factory=dict)
    globs: list[list[str]] = field(default_factory=list)
    defined: set[str] = field(default_factory=set)
    # (path as written, resolved start, line) of every reference
    refs: list[tuple[str, list[str], int]] = field(default_factory=list)


DEF_RE = re.compile(
    r"^(?:pub\s*(?:\([^)]*\))?\s+)?(?:unsafe\s+|async\s+|const\s+|extern\s+(?:\"[^\"]*\"\s+)?)*"
    r"(?:fn|struct|enum|union|trait|type|const|static|mod|macro_rules!)\s+(" + IDENT + ")"
)
MOD_RE = re.compile(r"^(?:pub\s*(?:\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*([;{])")
LOCAL_USE_RE = re.compile(r"(?<![A-Za-z0-9_])use\s+([^;]+);")
PATH_RE = re.compile(r"(?<![A-Za-z0-9_:])((?:" + IDENT + r"\s*::\s*)+" + IDENT + r"|" + IDENT + r"\s*::\s*\*)")


class Crate:
    def __init__(self, name: str, root_file: str):
        self.name = name
        self.root = Module((), root_file, 1)
        self.errors: list[str] = []
        self._load(self.root, root_file, is_dir_owner=True)

    # -- reading files

    def _load(self, m: Module, file: str, is_dir_owner: bool) -> None:
        try:
            src = open(file, encoding="utf-8").read()
        except OSError as e:
            self.errors.append(f"{file}: {e}")
            return
        text, strings = strip_source(src)
        base = os.path.dirname(file)
        if not is_dir_owner:  # foo.rs: children in foo/
            base = os.path.join(base, os.path.splitext(os.path.basename(file))[0])
        self._body(m, file, text, strings, (0, 0), base, os.path.dirname(file))

    def _body(self, m, file, text, strings, at, base, file_dir):
        """Module `m`'s body `text` (at `at` = (lines, chars) before it in
        `file`): its children, its bindings, its references. Inline child
        bodies are cut out."""
        offset = at[0]
        own: list[tuple[int, str]] = []  # (offset, code) pieces of m itself
        for it in items(text):
            if any(cfg_needs_test(a) for a in it.attrs):
                continue
            code = text[it.body_start : it.end]
            line = text.count("\n", 0, it.body_start) + 1 + offset
            mm = MOD_RE.match(code)
            if mm:
                self._child(m, file, text, strings, it, mm, line, base, file_dir, at)
                continue
            dm = DEF_RE.match(code)
            if dm:
                m.defined.add(dm.group(1))
            um = USE_RE.match(code)
            if um:
                self._use(m, um.group(1), line)
                continue
            own.append((it.body_start, code))
        for start, code in own:
            # `use` inside function bodies and blocks: imports all the same
            for lm in LOCAL_USE_RE.finditer(code):
                line = text.count("\n", 0, start + lm.start()) + 1 + offset
                self._use(m, lm.group(1), line)
            code = LOCAL_USE_RE.sub(lambda x: " " * len(x.group(0)), code)
            for pm in PATH_RE.finditer(code):
                segs = [s.strip() for s in pm.group(1).split("::")]
                line = text.count("\n", 0, start + pm.start()) + 1 + offset
                m.refs.append(("::".join(segs), segs, line))

    def _use(self, m: Module, tree: str, line: int) -> None:
        for path, name in parse_use_tree(tree, []):
            if not path:
                continue
            if name == "*":
                m.globs.append(path[:-1])
                m.refs.append(("::".join(path), path[:-1], line))
            else:
                if name:
                    m.bindings[name] = path
                m.refs.append(("::".join(path), path, line))

    def _child(self, m, file, text, strings, it, mm, line, base, file_dir, at):
        name = mm.group(1)
        child = Module(m.path + (name,), file, line)
        m.children[name] = child
        m.defined.add(name)
        path_attr = None
        for a in it.attrs:
            if re.match(r"^\s*path\s*=\s*\"", a):
                q = text.find('"', text.find("path", it.start))
                path_attr = strings.get(at[1] + q)
        if mm.group(2) == "{":
            brace = it.body_start + mm.end() - 1
            close = match_close(text, brace)
            inner = text[brace + 1 : close - 1]
            inner_at = (text.count("\n", 0, brace + 1) + at[0], at[1] + brace + 1)
            self._body(child, file, inner, strings, inner_at, os.path.join(base, name), file_dir)
            return
        if path_attr:
            target = os.path.normpath(os.path.join(file_dir, path_attr))
            child.file, child.line = target, 1
            self._load(child, target, is_dir_owner=target.endswith("mod.rs"))
            return
        for cand, owner in ((os.path.join(base, name + ".rs"), False), (os.path.join(base, name, "mod.rs"), True)):
            if os.path.exists(cand):
                child.file, child.line = cand, 1
                self._load(child, cand, is_dir_owner=owner)
                return
        self.errors.append(f"{file}:{line}: mod {name}; has no file under {base}")

    # -- resolving references

    def find(self, path: tuple[str, ...]) -> Module | None:
        m = self.root
        for s in path:
            m = m.children.get(s)
            if m is None:
                return None
        return m

    def resolve(self, m: Module, segs: list[str], depth: int = 0) -> tuple[str, ...] | None:
        """The module (path) a reference from `m` lands in, or None when it
        leaves the crate (std, other crates) or names nothing known."""
        if depth > 16 or not segs:
            return None
        first = segs[0]
        if first == "crate":
            start, rest = (), segs[1:]
        elif first in ("super", "self"):
            cur = m.path
            rest = list(segs)
            while rest and rest[0] in ("super", "self"):
                if rest[0] == "super":
                    if not cur:
                        return None
                    cur = cur[:-1]
                rest = rest[1:]
            start = cur
        elif first in m.children:
            start, rest = m.path, segs
        elif first in m.bindings and m.bindings[first] != segs:
            target = self.resolve(m, m.bindings[first], depth + 1)
            # the binding may name an item, not a module: then that's it
            if target is None:
                return None
            tm = self.find(target)
            if len(segs) == 1 or tm is None:
                return target
            return self.walk(tm, segs[1:], depth)
        else:
            for g in m.globs:
                gp = self.resolve(m, g, depth + 1) if g != segs else None
                gm = self.find(gp) if gp is not None else None
                if gm is not None and gm is not m and (
                    first in gm.defined or first in gm.bindings or first in gm.children
                ):
                    return self.walk(gm, segs, depth + 1)
            return None
        mod = self.find(start)
        if mod is None:
            return None
        return self.walk(mod, rest, depth)

    def walk(self, mod: Module, rest: list[str], depth: int) -> tuple[str, ...]:
        """Down the modules `rest` names; at the first name that is not a
        child, follow it if `mod` merely imports it."""
        for i, s in enumerate(rest):
            if s in mod.children:
                mod = mod.children[s]
                continue
            if s == "*":
                return mod.path
            if s in mod.bindings and s not in mod.defined:
                target = self.resolve(mod, mod.bindings[s] + rest[i + 1 :], depth + 1)
                return target if target is not None else mod.path
            if s not in mod.defined:
                for g in mod.globs:
                    gm_path = self.resolve(mod, g, depth + 1)
                    gm = self.find(gm_path) if gm_path is not None else None
                    if gm is not None and gm is not mod and (s in gm.defined or s in gm.bindings):
                        return self.walk(gm, rest[i:], depth + 1)
            return mod.path
        return mod.path


# ---------------------------------------------------------------------------
# Sibling graphs and their cycles.


def all_modules(m: Module):
    yield m
    for c in m.children.values():
        yield from all_modules(c)


def sibling_cycles(crate: Crate) -> list[list[tuple[str, str]]]:
    """For each module, the graph among its children (edge A -> B when code
    under A refers to something under B); the strongly connected parts with
    more than one child, each as a ring of steps with an example."""
    # every reference, resolved once: (from module, to module, where)
    refs = []
    for m in all_modules(crate.root):
        for text, segs, line in m.refs:
            t = crate.resolve(m, segs)
            if t is not None and t != m.path:
                refs.append((m.path, t, f"{rel(m.file)}:{line} {text}"))
    found = []
    for parent in all_modules(crate.root):
        names = list(parent.children)
        if len(names) < 2:
            continue
        depth = len(parent.path)
        edges: dict[str, dict[str, str]] = {n: {} for n in names}
        for src, dst, where in refs:
            if len(src) <= depth or len(dst) <= depth:
                continue
            if src[:depth] != parent.path or dst[:depth] != parent.path:
                continue
            a, b = src[depth], dst[depth]
            if a != b and b not in edges[a]:
                edges[a][b] = where
        for comp in tarjan(names, edges):
            if len(comp) > 1:
                found.append(describe(parent, comp, edges))
    return found


def tarjan(nodes, edges):
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
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

    for v in nodes:
        if v not in index:
            strong(v)
    return out


def describe(parent: Module, comp: list[str], edges) -> list[tuple[str, str]]:
    """One ring through the component (shortest way back to the start),
    as (step, example reference) pairs."""
    comp_set = set(comp)
    start = sorted(comp)[0]
    # BFS from start's successors back to start, inside the component
    prev = {}
    frontier = [start]
    seen = {start}
    ring = None
    while frontier and ring is None:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v]):
                if w not in comp_set:
                    continue
                if w == start:
                    ring = [v]
                    while ring[-1] != start:
                        ring.append(prev[ring[-1]])
                    ring.reverse()
                    break
                if w not in seen:
                    seen.add(w)
                    prev[w] = v
                    nxt.append(w)
            if ring:
                break
        frontier = nxt
    prefix = "::".join(parent.path)
    q = (lambda n: f"{prefix}::{n}" if prefix else n)
    steps = []
    for i, v in enumerate(ring):
        w = ring[(i + 1) % len(ring)]
        steps.append((f"{q(v)} -> {q(w)}", edges[v][w]))
    in_ring = {(ring[i], ring[(i + 1) % len(ring)]) for i in range(len(ring))}
    others = [
        (f"also {q(v)} -> {q(w)}", edges[v][w])
        for v in sorted(comp)
        for w in sorted(edges[v])
        if w in comp_set and (v, w) not in in_ring
    ]
    if others:
        steps.append((f"(the cycle ties {len(comp)} modules together: {', '.join(q(c) for c in sorted(comp))})", ""))
    return steps + others


# ---------------------------------------------------------------------------

ROOT = ""


def rel(p: str) -> str:
    return os.path.relpath(p, ROOT) if ROOT else p


def crate_roots(root: str):
    """(crate name, target, root file) for every crate under `root`."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("target", ".git", "node_modules"))
        if "Cargo.toml" not in filenames:
            continue
        toml = open(os.path.join(dirpath, "Cargo.toml"), encoding="utf-8").read()
        m = re.search(r'^\[package\][^\[]*?^name\s*=\s*"([^"]+)"', toml, re.M | re.S)
        if not m:
            continue
        name = m.group(1)
        src = os.path.join(dirpath, "src")
        targets = set()
        for f in ("lib.rs", "main.rs"):
            if os.path.exists(os.path.join(src, f)):
                targets.add(os.path.join(src, f))
        for pm in re.finditer(r'^path\s*=\s*"([^"]+\.rs)"', toml, re.M):
            targets.add(os.path.normpath(os.path.join(dirpath, pm.group(1))))
        bindir = os.path.join(src, "bin")
        if os.path.isdir(bindir):
            for e in sorted(os.listdir(bindir)):
                p = os.path.join(bindir, e)
                if e.endswith(".rs"):
                    targets.add(p)
                elif os.path.exists(os.path.join(p, "main.rs")):
                    targets.add(os.path.join(p, "main.rs"))
        for t in sorted(targets):
            if os.path.exists(t):
                yield name, t


def main(argv: list[str]) -> int:
    global ROOT
    ROOT = os.path.abspath(argv[1]) if len(argv) > 1 else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    bad = 0
    count = 0
    for name, root_file in crate_roots(ROOT):
        crate = Crate(name, root_file)
        count += 1
        for e in crate.errors:
            print(f"warning: {e}")
        for ring in sibling_cycles(crate):
            bad += 1
            print(f"cycle in {name} ({rel(root_file)}):")
            for step, where in ring:
                print(f"  {step}" + (f"    ({where})" if where else ""))
    if bad:
        print(f"{bad} module cycle(s) in {count} crate targets")
        return 1
    print(f"no module cycles in {count} crate targets")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
