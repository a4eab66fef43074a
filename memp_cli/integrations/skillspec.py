"""The Agent Skills format (https://agentskills.io/specification): SKILL.md written and checked.

A skill is a folder holding a ``SKILL.md``: YAML frontmatter between a first line ``---`` and the
next ``---`` line, then a Markdown body. The rules, as the reference validator (``skills-ref``)
applies them:

- the frontmatter is a mapping with ``name`` and ``description`` and, optionally, ``license``,
  ``compatibility``, ``metadata`` and ``allowed-tools``; any other key is an error;
- ``name``: 1-64 lowercase letters, digits and hyphens, no leading, trailing or doubled hyphen,
  equal to the folder's name;
- ``description``: 1-1024 characters, not blank; ``compatibility``: at most 500 characters;
  ``license``: a non-empty string; ``allowed-tools``: one space-separated string;
  ``metadata``: a map from string keys to string values;
- ``---`` anywhere inside the frontmatter is an error: skills-ref splits the file at the first
  two ``---`` it finds, so the frontmatter would end there;
- a body over 500 lines is a warning (the spec recommends fewer).

Writing (:func:`render_frontmatter`) needs no YAML library: every value is put on one line,
cleaned (:func:`clean_value`) and double-quoted. Reading (:func:`parse_frontmatter`, for
``--check``) is a strict YAML subset, as strict as the strictyaml skills-ref reads with: block
mappings and sequences, plain, quoted and block scalars, comments. Flow collections, anchors,
aliases, tags, duplicate keys and a plain value holding ``": "`` are refused, as there.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SKILL_FILE = "SKILL.md"
ALLOWED_KEYS = ("name", "description", "license", "compatibility", "allowed-tools", "metadata")
MAX_NAME = 64
MAX_DESCRIPTION = 1024
MAX_COMPATIBILITY = 500
MAX_BODY_LINES = 500
MAX_SKILL_BYTES = 1 << 20  # a SKILL.md larger than this is not read by --check

NAME_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_META_KEY = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_HYPHENS = re.compile(r"-{3,}")
# YAML 1.1 readers (PyYAML) refuse anything outside this set anywhere in the stream.
_NOT_PRINTABLE = re.compile("[^\t\n\r\x20-\x7e\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# Plain names a YAML 1.1 reader would take for a bool or null.
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


@dataclass(frozen=True)
class Problem:
    """One broken rule: ``path:line: message`` (line 0: the file as a whole)."""

    path: str
    line: int
    message: str
    warning: bool = False

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {'warning: ' if self.warning else ''}{self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "problem": self.message, "warning": self.warning}


# ------------------------------------------------------------------ writing


def clean_text(text: str) -> str:
    """``text`` without what a YAML reader or a UTF-8 encoder refuses (controls, lone
    surrogates, U+FFFE/FFFF, line and paragraph separators), whitespace runs kept."""
    text = text.replace("\u2028", "\n").replace("\u2029", "\n").replace("\x85", "\n")
    return _NOT_PRINTABLE.sub(" ", text)


def clean_value(text: str) -> str:
    """One line for the frontmatter: cleaned, whitespace collapsed, and no ``---`` (skills-ref
    would end the frontmatter there): a run of three or more hyphens becomes two."""
    return _HYPHENS.sub("--", " ".join(clean_text(text).split()))


def quote(value: str) -> str:
    """A double-quoted YAML scalar of a :func:`clean_value` string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _name_scalar(name: str) -> str:
    plain = name[:1].isalpha() and name not in _YAML_WORDS
    return name if plain else quote(name)


def render_frontmatter(
    name: str, description: str, metadata: dict[str, str], optional: dict[str, str] | None = None
) -> str:
    """The frontmatter block, ``---`` lines included: name, description, the optional keys
    given (license, compatibility, allowed-tools), then ``metadata`` sorted by key."""
    if not NAME_RE.match(name) or len(name) > MAX_NAME:
        raise ValueError(f"not a skill name: {name!r}")
    lines = ["---", f"name: {_name_scalar(name)}", f"description: {quote(clean_value(description))}"]
    for key, value in (optional or {}).items():
        if key not in ALLOWED_KEYS[2:5]:
            raise ValueError(f"not an optional frontmatter key: {key!r}")
        lines.append(f"{key}: {quote(clean_value(value))}")
    if metadata:
        lines.append("metadata:")
        for key in sorted(metadata):
            if not _META_KEY.match(key):
                raise ValueError(f"not a metadata key memp writes: {key!r}")
            lines.append(f"  {key}: {quote(clean_value(metadata[key]))}")
    lines.append("---")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ reading


class FrontmatterError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass
class Frontmatter:
    fields: dict[str, Any]
    lines: dict[str, int]  # top-level key -> its line in the file
    body_lines: int
    end_line: int  # the closing --- line


def split_frontmatter(text: str) -> tuple[list[str], int]:
    """The frontmatter's lines (without the ``---`` lines) and the closing line's number."""
    lines = text.split("\n")
    if lines[0].rstrip("\r").rstrip() != "---":
        raise FrontmatterError(1, "does not start with YAML frontmatter (a first line ---)")
    for i in range(1, len(lines)):
        if lines[i].rstrip("\r").rstrip() == "---":
            break
        if "---" in lines[i]:
            raise FrontmatterError(
                i + 1, 'holds "---" inside the frontmatter: the reference validator ends it there'
            )
    else:
        raise FrontmatterError(len(lines), "the frontmatter is not closed by a --- line")
    return [ln.rstrip("\r") for ln in lines[1:i]], i + 1


def parse_frontmatter(text: str) -> Frontmatter:
    """The frontmatter of a SKILL.md text; :class:`FrontmatterError` (with its line) when it is
    not the YAML subset described in the module docstring."""
    fm, end = split_frontmatter(text)
    parser = _Parser(fm, first_line=2)
    fields = parser.document()
    body = text.split("\n")[end:]
    while body and not body[-1].strip():
        body.pop()
    return Frontmatter(fields, parser.key_lines, len(body), end)


_ESCAPES = {
    "0": "\0", "a": "\a", "b": "\b", "t": "\t", "\t": "\t", "n": "\n", "v": "\v", "f": "\f",
    "r": "\r", "e": "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\", "N": "\x85", "_": "\xa0",
    "L": "\u2028", "P": "\u2029",
}  # fmt: skip
_HEX = {"x": 2, "u": 4, "U": 8}


class _Parser:
    def __init__(self, lines: list[str], first_line: int) -> None:
        self.lines = lines
        self.first = first_line
        self.i = 0
        self.cur = 0  # the line being read, for error messages
        self.key_lines: dict[str, int] = {}

    def fail(self, message: str, i: int | None = None) -> FrontmatterError:
        return FrontmatterError(self.first + (self.cur if i is None else i), message)

    def _skip(self) -> None:
        while self.i < len(self.lines) and _blank(self.lines[self.i]):
            self.i += 1

    def document(self) -> dict[str, Any]:
        self._skip()
        if self.i >= len(self.lines):
            raise self.fail("the frontmatter is empty", 0)
        indent = _indent(self.lines[self.i])
        if self.lines[self.i].strip().startswith("- "):
            raise self.fail("the frontmatter must be a mapping (key: value lines), not a list")
        out = self.mapping(indent, top=True)
        self._skip()
        if self.i < len(self.lines):
            raise self.fail("unexpected indentation")
        return out

    def mapping(self, indent: int, top: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while True:
            self._skip()
            if self.i >= len(self.lines):
                return out
            line = self.lines[self.i]
            self.cur = self.i
            ind = _indent(line)
            if ind < indent:
                return out
            if ind > indent:
                raise self.fail("unexpected indentation")
            if "\t" in line[:ind]:
                raise self.fail("tabs are not allowed in indentation")
            key, rest = self.key(line[ind:])
            if key in out:
                raise self.fail(f"duplicate key {key!r}")
            if top:
                self.key_lines[key] = self.first + self.i
            self.i += 1
            out[key] = self.value(rest, ind, in_mapping=True)

    def key(self, text: str) -> tuple[str, str]:
        if text[:1] in "\"'":
            value, end = self.quoted_inline(text)
            rest = text[end:]
            if not rest.startswith(":"):
                raise self.fail("expected ':' after a quoted key")
            return value, rest[1:]
        m = re.match(r"([^:#]*?):(?:\s|$)", text)
        if m is None or not m.group(1).strip():
            raise self.fail(f"expected 'key: value', got {text.strip()[:60]!r}")
        key = m.group(1).strip()
        if key[0] in "[{&*!|>%@`?-":
            raise self.fail(f"a key may not start with {key[0]!r}")
        return key, text[m.end() :] if m.end() <= len(text) else ""

    def value(self, rest: str, indent: int, in_mapping: bool) -> Any:
        rest = rest.strip()
        if rest.startswith("#") or not rest:
            self._skip()
            if self.i < len(self.lines):
                nxt = self.lines[self.i]
                ind = _indent(nxt)
                item = nxt.strip() == "-" or nxt.strip().startswith("- ")
                if ind > indent:
                    return self.sequence(ind) if item else self.mapping(ind)
                if ind == indent and in_mapping and item:
                    return self.sequence(ind)
            return None
        head = rest[0]
        if head in "[{":
            raise self.fail("flow collections ([...] or {...}) are not supported; use block style")
        if head in "&*!":
            raise self.fail("anchors, aliases and tags are not supported")
        if head in "|>":
            return self.block_scalar(rest, indent)
        if head in "\"'":
            return self.quoted(rest, indent)
        if head in "%@`":
            raise self.fail(f"a plain value may not start with {head!r}: quote it")
        return self.plain(rest, indent)

    def sequence(self, indent: int) -> list[Any]:
        out: list[Any] = []
        while True:
            self._skip()
            if self.i >= len(self.lines):
                return out
            line = self.lines[self.i]
            self.cur = self.i
            ind = _indent(line)
            text = line[ind:]
            if ind < indent or not (text == "-" or text.startswith("- ")):
                if ind > indent:
                    raise self.fail("unexpected indentation")
                return out
            if ind > indent:
                raise self.fail("unexpected indentation")
            rest = text[1:]
            if re.match(r"\s*[^\"'#][^:#]*:(\s|$)", rest):
                raise self.fail("a list of mappings is not supported here")
            self.i += 1
            out.append(self.value(rest, ind, in_mapping=False))

    def plain(self, text: str, indent: int) -> str:
        parts = [self.plain_line(text)]
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if _blank(line) and not line.strip():
                j = self.i
                while j < len(self.lines) and not self.lines[j].strip():
                    j += 1
                if j < len(self.lines) and _indent(self.lines[j]) > indent and not _blank(self.lines[j]):
                    parts.append("\n" * (j - self.i))
                    self.i = j
                    continue
                return _fold(parts)
            if _indent(line) <= indent or line.strip().startswith("#"):
                break
            self.cur = self.i
            parts.append(self.plain_line(line.strip()))
            self.i += 1
        return _fold(parts)

    def plain_line(self, text: str) -> str:
        text = re.split(r"\s#", text, maxsplit=1)[0].rstrip()
        if re.search(r":(\s|$)", text):
            raise self.fail('a plain value may not hold ": " (YAML reads a mapping): quote the value')
        return text

    def quoted_inline(self, text: str) -> tuple[str, int]:
        """A quoted scalar that ends on this line: (value, index after the closing quote)."""
        value, end, closed = _scan_quoted(text, text[0], True, self)
        if not closed:
            raise self.fail("a quoted key must end on its line")
        return value, end

    def quoted(self, text: str, indent: int) -> str:
        q = text[0]
        start = self.i - 1
        chunk = text
        pieces: list[str] = []
        while True:
            value, end, closed = _scan_quoted(chunk, q, not pieces, self)
            if closed:
                pieces.append(value)
                tail = chunk[end:].strip()
                if tail and not tail.startswith("#"):
                    raise self.fail(f"text after the closing quote: {tail[:40]!r}")
                return _fold_quoted(pieces)
            pieces.append(value)
            if self.i >= len(self.lines):
                raise self.fail("a quoted value is not closed", start)
            chunk = self.lines[self.i].strip()
            self.cur = self.i
            self.i += 1

    def block_scalar(self, header: str, indent: int) -> str:
        m = re.fullmatch(r"([|>])([+-]?)([1-9]?)([+-]?)\s*(#.*)?", header)
        if m is None:
            raise self.fail(f"bad block scalar header {header!r}")
        literal, chomp = m.group(1) == "|", m.group(2) or m.group(4)
        explicit = int(m.group(3)) if m.group(3) else 0
        raw: list[str] = []
        block_indent = indent + explicit if explicit else 0
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.strip():
                ind = _indent(line)
                if ind <= indent:
                    break
                if not block_indent:
                    block_indent = ind
                if ind < block_indent:
                    self.cur = self.i
                    raise self.fail("a block scalar line is less indented than its first line")
            raw.append(line[block_indent:] if line.strip() else "")
            self.i += 1
        trailing = 0
        while raw and raw[-1] == "":
            raw.pop()
            trailing += 1
        text = "\n".join(raw) if literal else _fold_block(raw)
        if chomp == "-" or not raw:
            return text
        return text + "\n" * (1 + trailing if chomp == "+" else 1)


def _blank(line: str) -> bool:
    s = line.strip()
    return not s or s.startswith("#")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _fold(parts: list[str]) -> str:
    out = ""
    for p in parts:
        if p.startswith("\n"):
            out += p
        elif out and not out.endswith("\n"):
            out += " " + p
        else:
            out += p
    return out


def _fold_quoted(pieces: list[str]) -> str:
    """Lines of a multi-line quoted scalar: a line break is a space, an empty line a newline."""
    out = pieces[0].rstrip(" \t") if len(pieces) > 1 else pieces[0]
    for k, p in enumerate(pieces[1:], 1):
        last = k == len(pieces) - 1
        p = p.strip(" \t") if not last else p.lstrip(" \t")
        if out.endswith("\\\n"):  # an escaped line break joins without a space
            out = out[:-2] + p
        elif not p and not last:
            out += "\n"
        else:
            out += ("" if out.endswith("\n") else " ") + p
    return out


def _fold_block(raw: list[str]) -> str:
    out = ""
    for k, line in enumerate(raw):
        if k == 0:
            out = line
        elif not line or line.startswith((" ", "\t")) or raw[k - 1].startswith((" ", "\t")):
            out += "\n" + line
        elif not raw[k - 1]:
            out += line
        else:
            out += " " + line
    return out


def _scan_quoted(text: str, q: str, opening: bool, parser: _Parser) -> tuple[str, int, bool]:
    """Scan ``text`` (from its opening quote ``q`` when ``opening``, else a continuation line
    of the scalar): (value so far, index after the closing quote, closed?)."""
    j = 1 if opening else 0
    out: list[str] = []
    while j < len(text):
        c = text[j]
        if q == "'":
            if c == "'":
                if text[j + 1 : j + 2] == "'":
                    out.append("'")
                    j += 2
                    continue
                return "".join(out), j + 1, True
            out.append(c)
            j += 1
            continue
        if c == '"':
            return "".join(out), j + 1, True
        if c == "\\":
            e = text[j + 1 : j + 2]
            if not e:  # an escaped line break
                out.append("\\\n")
                return "".join(out), len(text), False
            if e in _ESCAPES:
                out.append(_ESCAPES[e])
                j += 2
                continue
            if e in _HEX:
                digits = text[j + 2 : j + 2 + _HEX[e]]
                if not re.fullmatch(r"[0-9a-fA-F]+", digits or "-") or len(digits) != _HEX[e]:
                    raise parser.fail(f"bad escape \\{e}{digits}")
                out.append(chr(int(digits, 16)))
                j += 2 + _HEX[e]
                continue
            raise parser.fail(f"unknown escape \\{e} in a double-quoted value")
        out.append(c)
        j += 1
    return "".join(out), len(text), False


# ------------------------------------------------------------------ the rules


def name_problems(name: Any, folder: str | None) -> list[str]:
    if not isinstance(name, str) or not name.strip():
        return ["'name' must be a non-empty string"]
    out = []
    if len(name) > MAX_NAME:
        out.append(f"'name' is {len(name)} characters, over the {MAX_NAME} allowed")
    if not NAME_RE.match(name):
        out.append(
            f"'name' {name!r} must be lowercase letters, digits and single hyphens, "
            "not starting or ending with a hyphen"
        )
    if folder is not None and unicodedata.normalize("NFKC", folder) != unicodedata.normalize("NFKC", name):
        out.append(f"'name' {name!r} differs from the folder's name {folder!r}: they must be equal")
    return out


def field_problems(fields: dict[str, Any], folder: str | None) -> list[tuple[str, str]]:
    """(key, message) for each broken rule of a parsed frontmatter."""
    out: list[tuple[str, str]] = []
    for key in sorted(set(fields) - set(ALLOWED_KEYS)):
        out.append(
            (key, f"key {key!r} is not allowed (only {', '.join(ALLOWED_KEYS)}); put it under metadata")
        )
    for key in ("name", "description"):
        if key not in fields:
            out.append(("", f"the required key {key!r} is missing"))
    if "name" in fields:
        out.extend(("name", m) for m in name_problems(fields["name"], folder))
    if "description" in fields:
        d = fields["description"]
        if not isinstance(d, str) or not d.strip():
            out.append(("description", "'description' must be a non-empty string"))
        elif len(d) > MAX_DESCRIPTION:
            out.append(
                ("description", f"'description' is {len(d)} characters, over the {MAX_DESCRIPTION} allowed")
            )
    if "compatibility" in fields:
        c = fields["compatibility"]
        if not isinstance(c, str) or not c.strip():
            out.append(("compatibility", "'compatibility' must be a non-empty string"))
        elif len(c) > MAX_COMPATIBILITY:
            out.append(
                (
                    "compatibility",
                    f"'compatibility' is {len(c)} characters, over the {MAX_COMPATIBILITY} allowed",
                )
            )
    if "license" in fields and (not isinstance(fields["license"], str) or not fields["license"].strip()):
        out.append(("license", "'license' must be a non-empty string"))
    if "allowed-tools" in fields and not isinstance(fields["allowed-tools"], str):
        out.append(("allowed-tools", "'allowed-tools' must be one string of space-separated tool names"))
    if "metadata" in fields:
        meta = fields["metadata"]
        if not isinstance(meta, dict):
            out.append(("metadata", "'metadata' must be a mapping of string keys to string values"))
        else:
            for k, v in meta.items():
                if not isinstance(v, str):
                    out.append(("metadata", f"metadata {k!r} must be a string, not a nested list or mapping"))
    return out


def check_skill(folder: Path) -> list[Problem]:
    """Every broken rule of one skill folder (empty: it is a valid skill)."""
    path = folder / SKILL_FILE
    shown = str(path)
    if not path.is_file():
        if (folder / "skill.md").is_file():
            return [Problem(str(folder / "skill.md"), 0, "the spec names the file SKILL.md (upper case)")]
        return [Problem(str(folder), 0, f"no {SKILL_FILE} in this folder: not a skill")]
    try:
        if path.stat().st_size > MAX_SKILL_BYTES:
            return [Problem(shown, 0, f"over {MAX_SKILL_BYTES} bytes: not read")]
        raw = path.read_bytes()
    except OSError as e:
        return [Problem(shown, 0, f"cannot be read ({e.strerror})")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return [Problem(shown, raw[: e.start].count(b"\n") + 1, f"not UTF-8 text ({e.reason})")]
    text = text.removeprefix("\ufeff")
    try:
        fm = parse_frontmatter(text)
    except FrontmatterError as e:
        return [Problem(shown, e.line, e.message)]
    out = [
        Problem(shown, fm.lines.get(key, 1 if key == "" else 0) or 1, msg)
        for key, msg in field_problems(fm.fields, folder.name)
    ]
    if fm.body_lines > MAX_BODY_LINES:
        out.append(
            Problem(
                shown,
                fm.end_line + 1,
                f"the body has {fm.body_lines} lines; keep it under {MAX_BODY_LINES}",
                True,
            )
        )
    return out


def check_dir(directory: Path) -> tuple[int, list[Problem]]:
    """(skills checked, problems) of ``directory``: one skill when it holds a SKILL.md itself,
    else each of its folders (hidden ones, like .git, skipped)."""
    if not directory.is_dir():
        return 0, [Problem(str(directory), 0, "not a directory")]
    if (directory / SKILL_FILE).is_file():
        return 1, check_skill(directory)
    folders = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    problems: list[Problem] = []
    for f in folders:
        problems.extend(check_skill(f))
    return len(folders), problems
