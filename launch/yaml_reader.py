"""Checked values out of YAML nodes, every error a TopologyError at its line.

The topology parser (launch/topology_parser.py) reads the composed node tree,
not the constructed Python objects, so that each error can name the line and
the key at fault. `YamlReader` holds what that takes, independent of the
topology's schema: scalars of the expected type (with a hint where YAML 1.1
read a word as a boolean or a number), mappings checked against their allowed
keys (merge keys applied, duplicates refused, the closest key suggested), and
paths resolved against the topology file's directory.
"""

from __future__ import annotations

import difflib
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from launch.topology import TopologyError

MERGE_TAG = "tag:yaml.org,2002:merge"
S = TypeVar("S", bound=str)
# Deeper than any topology needs (it nests 4 levels): PyYAML composes nodes
# recursively, so a file of 100,000 '[' would end in a RecursionError.
MAX_DEPTH = 64


class BoundedLoader(yaml.SafeLoader):
    """A SafeLoader that refuses collections nested deeper than MAX_DEPTH, with a
    MarkedYAMLError at the node that goes too deep (a one-line error like any other)."""

    depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.depth >= MAX_DEPTH:
            mark = self.peek_event().start_mark
            problem = f"nested deeper than {MAX_DEPTH} levels"
            raise yaml.composer.ComposerError(None, None, problem, mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def syntax_error(e: yaml.MarkedYAMLError, file: str) -> TopologyError:
    """A PyYAML syntax error as one line at the line of its mark."""
    mark = e.problem_mark or e.context_mark
    problem = f"invalid YAML at column {mark.column + 1}: " if mark else "invalid YAML: "
    if e.context and e.problem and not e.context.startswith("while"):
        problem += one_line(f"{e.context}, {e.problem}")  # "expected a single document..."
    else:
        problem += one_line(e.problem or e.context or "")
        if e.context and e.problem:  # "while parsing a flow sequence", where it started
            where = f" at line {e.context_mark.line + 1}" if e.context_mark else ""
            problem += f" ({one_line(e.context)}{where})"
    return TopologyError(problem, file=file, line=mark.line + 1 if mark else None)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(text: str) -> str:
    return " ".join(text.split())


def join_key(key: str, child: str) -> str:
    return f"{key}.{child}" if key else child


def line_of(node: Node) -> int | None:
    return node.start_mark.line + 1 if node.start_mark is not None else None


def choices_text(values: Sequence[str]) -> str:
    return ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else values[0]


class YamlReader:
    """Reads nodes of one file (`file` names it in errors, None for none) whose
    relative paths resolve against `base_dir`."""

    def __init__(self, loader: yaml.SafeLoader, file: str | None, base_dir: Path) -> None:
        self.loader = loader
        self.file = file
        self.base_dir = base_dir

    # -- reporting and scalars ---------------------------------------------------------------

    def fail(self, where: Node | int | None, key: str, problem: str) -> NoReturn:
        """Raise the error; `where` is the node at fault, or a line number."""
        line = line_of(where) if isinstance(where, Node) else where
        raise TopologyError(problem, file=self.file, line=line, key=key)

    def value(self, node: Node, key: str) -> Any:
        """A scalar's value; collections come back as list / dict markers for messages."""
        if isinstance(node, MappingNode):
            return {}
        if isinstance(node, SequenceNode):
            return []
        try:
            value = self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as e:  # an unknown tag
            self.fail(node, key, f"invalid YAML value: {one_line(e.problem or str(e))}")
        except Exception as e:  # `!!int three`, `2001-13-45`, `!!timestamp x`: anything
            self.fail(node, key, f"invalid YAML value {_short(node.value)!r}: {one_line(str(e))}")
        if isinstance(value, str) and "\0" in value:  # no path, argument or variable holds one
            self.fail(node, key, "a NUL character is not allowed")
        return value

    def describe(self, node: Node, key: str) -> str:
        """How an unexpected value reads in a message."""
        if isinstance(node, MappingNode):
            return "a mapping"
        if isinstance(node, SequenceNode):
            return "a list"
        value = self.value(node, key)
        if value is None:
            return "nothing (null)"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return repr(value)
        text = value if isinstance(value, str) else node.value
        return repr(text if len(text) <= 40 else text[:37] + "...")

    def expected(self, node: Node, key: str, what: str, hint: str = "") -> NoReturn:
        self.fail(node, key, f"expected {what}, got {self.describe(node, key)}{hint}")

    def string(self, node: Node, key: str, what: str = "a string") -> str:
        value = self.value(node, key)
        if isinstance(value, str) and value.strip():
            return value
        hint = ""
        if isinstance(node, ScalarNode) and node.style is None and value is not None:
            hint = f" (quote it to mean the string '{node.value}')"
        self.expected(node, key, what, hint)

    def choice(self, node: Node, key: str, choices: Sequence[S]) -> S:
        value = self.value(node, key)
        for choice in choices:  # the tuple's own item: typed as narrowly as the tuple
            if value == choice:
                return choice
        problem = f"expected {choices_text(choices)}, got {self.describe(node, key)}"
        if isinstance(value, str):
            close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
            if close:
                problem += f"; did you mean '{close[0]}'?"
        self.fail(node, key, problem)

    def integer(self, node: Node, key: str, what: str, minimum: int) -> int:
        value = self.value(node, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.expected(node, key, what)
        return value

    def seconds(self, node: Node, key: str) -> float:
        value = self.value(node, key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            self.expected(node, key, "a positive number of seconds")
        if value == float("inf"):
            self.expected(node, key, "a finite number of seconds")
        return float(value)

    def sequence(self, node: Node, key: str, what: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            self.expected(node, key, what)
        return list(node.value)

    def mapping(
        self,
        node: Node,
        key: str,
        allowed: Sequence[str] | None,
        what: str = "a mapping",
        *,
        raw_keys: bool = False,
    ) -> dict[str, tuple[Node, Node]]:
        """The keys of a mapping node: key -> (key node, value node). Keys not `allowed`
        (None: any string) and duplicate keys are errors. Merge keys (<<) are applied,
        and the mapping's own keys override merged ones, as YAML says. With `raw_keys`,
        scalar keys are taken as written (an environment variable `ON` is not true)."""
        if not isinstance(node, MappingNode):
            self.expected(node, key, what)
        own = sum(1 for k, _v in node.value if k.tag != MERGE_TAG)
        try:
            self.loader.flatten_mapping(node)  # merged pairs first, then the node's own
        except yaml.constructor.ConstructorError as e:
            self.fail(node, key, f"invalid merge (<<): {one_line(e.problem or str(e))}")
        merged = len(node.value) - own
        found: dict[str, tuple[Node, Node]] = {}
        own_keys: dict[str, Node] = {}
        for i, (knode, vnode) in enumerate(node.value):
            raw = raw_keys and isinstance(knode, ScalarNode)
            name = knode.value if raw else self.value(knode, key)
            if not isinstance(name, str):
                self.fail(knode, key, f"keys are strings, got {self.describe(knode, key)}")
            child = join_key(key, name)
            if allowed is not None and name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
                if close:
                    self.fail(knode, child, f"unknown key; did you mean '{close[0]}'?")
                self.fail(knode, child, f"unknown key; expected one of: {', '.join(allowed)}")
            if i >= merged:
                if name in own_keys:
                    first = line_of(own_keys[name])
                    self.fail(knode, child, f"duplicate key (first at line {first})")
                own_keys[name] = knode
            found[name] = (knode, vnode)
        return found

    def path(self, node: Node, key: str) -> Path:
        value = self.string(node, key, "a path")
        return self.resolve(node, key, value)

    def resolve(self, node: Node, key: str, value: str) -> Path:
        """An absolute path: `~` expanded, relative to the topology file's directory."""
        try:
            return (self.base_dir / Path(value).expanduser()).resolve()
        except RuntimeError as e:  # ~user of an unknown user, or no home directory
            self.fail(node, key, f"cannot expand {_short(value)!r}: {e}")
        except OSError as e:  # a symlink loop, a name too long
            self.fail(node, key, f"cannot use {_short(value)!r}: {e.strerror or e}")

    def existing_file(self, node: Node, key: str) -> Path:
        path = self.path(node, key)
        mode = self.mode(node, key, path)
        if mode is None:
            self.fail(node, key, f"no such file: {path}")
        if not stat.S_ISREG(mode):
            self.fail(node, key, f"not a file: {path}")
        return path

    def writable_path(self, node: Node, key: str) -> Path:
        path = self.path(node, key)
        mode = self.mode(node, key, path)
        if mode is not None and stat.S_ISDIR(mode):
            self.fail(node, key, f"is a directory, expected a file path: {path}")
        return path

    def mode(self, node: Node, key: str, path: Path) -> int | None:
        """The st_mode of what `path` names (None if nothing); any other error of the
        lookup (a name too long, a symlink loop, no permission) is the key's error."""
        try:
            return os.stat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            self.fail(node, key, f"cannot use {_short(str(path))}: {e.strerror or e}")
