"""A small query layer over tree-sitter-bicep parse trees, for the structural tests of `infra/`.

There is no Bicep CLI on these machines; tree-sitter parses Bicep and these helpers answer the
questions the tests ask: which declarations a file has (with their decorators), which identifiers it
references, and what an object literal holds, converted to Python (`dict`, `list`, `str`, `int`,
`bool`, `None`; anything computed stays an `Expr` holding its source text).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import tree_sitter
import tree_sitter_bicep

_DECLARATIONS = {
    "parameter_declaration": "param",
    "variable_declaration": "var",
    "resource_declaration": "resource",
    "module_declaration": "module",
    "output_declaration": "output",
    "type_declaration": "type",
}


@cache
def _parser() -> tree_sitter.Parser:
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_bicep.language()))


@dataclass(frozen=True)
class Expr:
    """A value that is not a literal: its Bicep source text."""

    text: str


@dataclass
class Declaration:
    kind: str
    name: str
    node: tree_sitter.Node
    decorators: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def type_string(self) -> str | None:
        """The resource type (`Microsoft.X/y@version`) or module path; None for other declarations."""
        if self.kind not in ("resource", "module"):
            return None
        strings = [c for c in self.node.named_children if c.type == "string"]
        return _text(strings[0])[1:-1] if strings else None

    @property
    def resource_type(self) -> str | None:
        """The resource type without its API version."""
        return self.type_string.split("@")[0] if self.type_string else None

    @property
    def existing(self) -> bool:
        return any(c.type == "existing" or _text(c) == "existing" for c in self.node.children)

    @property
    def condition(self) -> str | None:
        """The `if (...)` condition's source, when the declaration is conditional."""
        for child in self.node.named_children:
            if child.type == "if_statement":
                return _text(child.named_children[0])
        return None

    @property
    def loop(self) -> tree_sitter.Node | None:
        for child in self.node.named_children:
            if child.type == "for_statement":
                return child
        return None

    @property
    def value_node(self) -> tree_sitter.Node:
        """The declaration's value or body (for resources and modules: the object, inside `if`/`for`)."""
        last = self.node.named_children[-1]
        if self.kind in ("resource", "module"):
            return body_of(last)
        return last

    @property
    def body(self) -> Any:
        return to_python(self.value_node)

    @property
    def default(self) -> Any:
        """A parameter's default value (`None` when it has none or it is `null`)."""
        if self.kind != "param":
            raise TypeError("only parameters have defaults")
        children = self.node.named_children
        if len(children) < 3:
            return None
        return to_python(children[-1])

    @property
    def has_default(self) -> bool:
        return self.kind == "param" and len(self.node.named_children) >= 3

    @property
    def secure(self) -> bool:
        return "secure" in self.decorators


def body_of(node: tree_sitter.Node) -> tree_sitter.Node:
    """Unwrap `if (cond) {...}` and `[for x in y: {...}]` to the object they produce."""
    while node.type in ("if_statement", "for_statement"):
        if node.type == "for_statement":
            body = node.child_by_field_name("body")
            node = body if body is not None else node.named_children[-1]
        else:
            node = node.named_children[-1]
    return node


def _text(node: tree_sitter.Node) -> str:
    return (node.text or b"").decode()


def _before_arrow(lambda_node: tree_sitter.Node, node: tree_sitter.Node) -> bool:
    for child in lambda_node.children:
        if _text(child) == "=>":
            return False
        if child.id == node.id:
            return True
    return False


def to_python(node: tree_sitter.Node) -> Any:
    """Literals to Python values; objects to dicts and arrays to lists; anything else to `Expr`."""
    kind = node.type
    if kind == "string":
        if any(c.type == "interpolation" for c in node.named_children):
            return Expr(_text(node))
        return "".join(_text(c) for c in node.named_children if c.type == "string_content")
    if kind == "number":
        return int(_text(node))
    if kind == "boolean":
        return _text(node) == "true"
    if kind == "null":
        return None
    if kind == "object":
        out: dict[Any, Any] = {}
        for prop in node.named_children:
            if prop.type != "object_property":
                continue
            key_node, value_node = prop.named_children[0], prop.named_children[-1]
            key = _text(key_node) if key_node.type == "identifier" else to_python(key_node)
            out[key] = to_python(value_node)
        return out
    if kind == "array":
        return [to_python(c) for c in node.named_children if c.type not in ("comment",)]
    return Expr(_text(node))


def walk(node: tree_sitter.Node) -> Iterator[tree_sitter.Node]:
    yield node
    for child in node.children:
        yield from walk(child)


class BicepFile:
    """One parsed `.bicep` file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.source = path.read_bytes()
        self.tree = _parser().parse(self.source)
        self.root = self.tree.root_node
        self.declarations: list[Declaration] = []
        pending: dict[str, list[Any]] = {}
        for child in self.root.named_children:
            if child.type == "decorators":
                for decorator in child.named_children:
                    call = decorator.named_children[0]
                    if call.type == "call_expression":
                        fn = call.child_by_field_name("function")
                        args = call.child_by_field_name("arguments")
                        values = [to_python(a) for a in args.named_children] if args is not None else []
                        pending[_text(fn) if fn is not None else ""] = values
                    else:
                        pending[_text(call)] = []
                continue
            kind = _DECLARATIONS.get(child.type)
            if kind is None:
                pending = {}
                continue
            name = _text(child.named_children[0])
            self.declarations.append(Declaration(kind, name, child, pending))
            pending = {}

    def errors(self) -> list[str]:
        """Every ERROR or MISSING node, as `line:column: text`."""
        out = []
        for node in walk(self.root):
            if node.type == "ERROR" or node.is_missing:
                line, col = node.start_point
                label = "missing " + node.type if node.is_missing else "syntax error near " + _text(node)[:60]
                out.append(f"{self.path}:{line + 1}:{col + 1}: {label!r}")
        return out

    def of_kind(self, kind: str) -> dict[str, Declaration]:
        return {d.name: d for d in self.declarations if d.kind == kind}

    @property
    def params(self) -> dict[str, Declaration]:
        return self.of_kind("param")

    @property
    def variables(self) -> dict[str, Declaration]:
        return self.of_kind("var")

    @property
    def resources(self) -> dict[str, Declaration]:
        return self.of_kind("resource")

    @property
    def modules(self) -> dict[str, Declaration]:
        return self.of_kind("module")

    @property
    def outputs(self) -> dict[str, Declaration]:
        return self.of_kind("output")

    def resources_of_type(self, resource_type: str) -> list[Declaration]:
        return [d for d in self.resources.values() if d.resource_type == resource_type]

    def local_names(self) -> set[str]:
        """Loop variables, loop indexes and lambda parameters (scoped names, collected file-wide)."""
        names: set[str] = set()
        for node in walk(self.root):
            if node.type in ("loop_variable", "loop_enumerator"):
                names.add(_text(node))
            elif node.type == "for_statement":
                initializer = node.child_by_field_name("initializer")
                if initializer is not None and initializer.type == "identifier":
                    names.add(_text(initializer))
            elif node.type == "lambda_expression":
                for child in node.children:
                    if _text(child) == "=>":
                        break
                    if child.type == "identifier":
                        names.add(_text(child))
        return names

    def references(self) -> set[str]:
        """Identifiers used as values: not declaration names, property keys, function names or locals' binding."""
        refs: set[str] = set()
        declaration_names = {d.node.named_children[0].id for d in self.declarations}
        for node in walk(self.root):
            if node.type != "identifier" or node.id in declaration_names:
                continue
            parent = node.parent
            if parent is None:
                continue
            if parent.type == "object_property" and parent.named_children[0].id == node.id:
                continue  # a property key
            if parent.type == "call_expression" and parent.child_by_field_name("function") == node:
                continue  # a function name (built-in or decorator)
            if parent.type == "for_statement" and parent.child_by_field_name("initializer") == node:
                continue
            if parent.type == "lambda_expression" and _before_arrow(parent, node):
                continue  # a lambda parameter
            refs.add(_text(node))
        return refs

    def objects(self) -> Iterator[dict[Any, Any]]:
        """Every object literal in the file, converted (nested ones too)."""
        for node in walk(self.root):
            if node.type == "object":
                yield to_python(node)

    def name_value_entries(self) -> list[dict[Any, Any]]:
        """Objects shaped like app settings or container env: `{name: 'X', value|secretRef: ...}`."""
        return [
            obj
            for obj in self.objects()
            if isinstance(obj.get("name"), str) and ("value" in obj or "secretRef" in obj) and len(obj) <= 3
        ]


def parse(path: Path) -> BicepFile:
    return BicepFile(path)
