"""YAML as nexus reads it: every document (``--config``, ``--set`` / ``--task-option``
values, a run's or checkpoint's ``config.yaml``) goes through `parse_yaml` / `read_yaml`,
which bound its size, nesting, aliases and expanded node count and refuse duplicate keys,
so a hostile file is one line, never a hang (docs/reliability.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def _yaml_problem(e: yaml.YAMLError) -> str:
    problem = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
    context = getattr(e, "context", None)
    return f"{context}, {problem}" if context else str(problem)


#: Limits of every YAML document nexus reads (``--config``, ``--set`` / ``--task-option``
#: values, a run's or checkpoint's ``config.yaml``). A config is a few KB, nested 3-4 deep;
#: these are two orders of magnitude above that and far below what hurts: a 1 KB alias
#: bomb ("billion laughs") expands to 10^9 nodes, which hangs whatever walks it.
YAML_MAX_BYTES = 1 << 20      # the file (bytes)
YAML_MAX_DEPTH = 64           # nesting of mappings / sequences
YAML_MAX_NODES = 100_000      # nodes after expanding every alias
YAML_MAX_ALIASES = 1_000      # ``*alias`` uses


if getattr(yaml, "__with_libyaml__", False):  # libyaml scans and parses (C, ~3x faster)
    from yaml._yaml import CParser

    class _Parser(yaml.composer.Composer, CParser):  # the composer in Python: limits below
        def __init__(self, stream):
            CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
else:  # pragma: no cover - PyYAML without libyaml
    class _Parser(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer):
        def __init__(self, stream):
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            yaml.composer.Composer.__init__(self)


class _LimitedLoader(_Parser, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
    """``yaml.safe_load``'s loader (plain values only) that refuses duplicate keys, nesting
    deeper than YAML_MAX_DEPTH, more than YAML_MAX_ALIASES aliases or YAML_MAX_NODES nodes,
    a document that expands to more than YAML_MAX_NODES nodes, and recursive aliases, all
    before anything is built."""

    def __init__(self, stream):
        _Parser.__init__(self, stream)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self._depth = 0
        self._aliases = 0
        self._nodes = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > YAML_MAX_ALIASES:
                raise yaml.composer.ComposerError(
                    None, None, f"more than {YAML_MAX_ALIASES} aliases", self.peek_event().start_mark)
        else:
            self._nodes += 1
            if self._nodes > YAML_MAX_NODES:
                raise yaml.composer.ComposerError(
                    None, None, f"expands to more than {YAML_MAX_NODES} nodes", self.peek_event().start_mark)
        self._depth += 1
        try:
            if self._depth > YAML_MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {YAML_MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check_expanded_size(node)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # "<<: *base" then a key of base: an override, not a duplicate
                key = self.construct_object(key_node, deep=True)
                try:
                    dup = key in seen
                    seen.add(key)
                except TypeError:  # unhashable: SafeConstructor names it below
                    continue
                if dup:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (the second would replace the first)",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _check_expanded_size(root) -> None:
    """Count the nodes of ``root`` with every alias expanded (memoized: linear in the
    document, however large the expansion); refuse cycles and more than YAML_MAX_NODES."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            children = _yaml_children(node)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > YAML_MAX_NODES:
                raise yaml.composer.ComposerError(
                    None, None, f"expands to more than {YAML_MAX_NODES} nodes (aliases of aliases?)",
                    node.start_mark)
            continue
        if key in sizes:
            continue
        if key in active:
            raise yaml.composer.ComposerError(None, None, "recursive alias (a node inside itself)",
                                              node.start_mark)
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _yaml_children(node) if id(c) not in sizes)


def _yaml_children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [x for pair in node.value for x in pair]
    return []


def parse_yaml(text: str, where: str) -> Any:
    """Parse YAML ``text`` with the limits above (plain values only, as ``yaml.safe_load``).
    Any problem is a one-line ValueError ``<where>:<line>:<column>: invalid YAML: <problem>``;
    ``where`` names the source (a file, ``--set optim.lr``)."""
    if len(text) > YAML_MAX_BYTES:
        raise ValueError(f"{where}: {len(text)} characters of YAML, more than the limit of {YAML_MAX_BYTES}")
    loader = _LimitedLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        at = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark is not None else where
        raise ValueError(f"{at}: invalid YAML: {_yaml_problem(e)}") from None
    except RecursionError:  # pragma: no cover - the depth limit comes first
        raise ValueError(f"{where}: invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path, what: str = "--config") -> Any:
    """Parse a YAML file with `parse_yaml`'s limits (and at most YAML_MAX_BYTES); malformed,
    oversized, unreadable or non-UTF-8 files are one-line ValueErrors naming the file (and
    line:column)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(YAML_MAX_BYTES + 1)
    except OSError as e:
        raise ValueError(f"{what}: cannot read {str(p)!r} ({e.strerror or e})") from None
    if len(raw) > YAML_MAX_BYTES:
        raise ValueError(f"{what}: {str(p)!r} is larger than {YAML_MAX_BYTES} bytes; not a nexus config")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what}: {str(p)!r} is not UTF-8 text (byte {e.start})") from None
    return parse_yaml(text, str(p))
