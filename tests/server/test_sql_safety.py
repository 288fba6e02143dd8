"""SQL is never built from strings: no f-string, `%`, `+` or `.format()` makes SQL text, and
what reaches `text()`, `execute()`, `exec_driver_sql()` or `copy()` is a literal or a composed
object (SQLAlchemy constructs, `psycopg.sql`).

The scan reads the source (AST) of the service, its CLI and the migrations. A string that
looks like SQL and is assembled at run time is a finding, wherever it is.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("server", "cli", "migrations")
SQL_WORDS = re.compile(
    r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|COPY\s+\w+|"
    r"CREATE\s+(TABLE|INDEX|ROLE|USER|DATABASE|VIEW)|DROP\s+\w+|ALTER\s+\w+|TRUNCATE\s|"
    r"GRANT\s|REVOKE\s|WHERE\s)",
    re.IGNORECASE | re.DOTALL,
)
SQL_SINKS = {"text", "execute", "executemany", "exec_driver_sql", "copy", "executescript"}


def _constant_text(node: ast.AST) -> str:
    """The literal parts of a string expression (to recognise SQL in it)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return " ".join(_constant_text(v) for v in node.values)
    if isinstance(node, ast.BinOp):
        return _constant_text(node.left) + " " + _constant_text(node.right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return _constant_text(node.func.value)
    return ""


def _built_string(node: ast.AST) -> bool:
    """An expression that assembles a string at run time."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        return bool(_constant_text(node))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        inner = node.func.value
        return node.func.attr == "format" and isinstance(inner, ast.Constant) and isinstance(
            inner.value, str
        )
    return False


def _sink_name(call: ast.Call) -> str | None:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name if name in SQL_SINKS else None


def find_string_built_sql(source: str, filename: str = "<source>") -> list[str]:
    tree = ast.parse(source, filename)
    built_names: dict[str, int] = {}
    problems: list[str] = []
    for node in ast.walk(tree):
        if _built_string(node) and SQL_WORDS.search(_constant_text(node)):
            problems.append(f"{filename}:{node.lineno}: SQL assembled from strings")  # type: ignore[attr-defined]
        if isinstance(node, ast.Assign) and _built_string(node.value):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    built_names[target.id] = node.lineno
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _sink_name(node) and node.args:
            arg = node.args[0]
            if _built_string(arg) or (isinstance(arg, ast.Name) and arg.id in built_names):
                problems.append(
                    f"{filename}:{node.lineno}: {_sink_name(node)}() gets a string built at run time"
                )
    return sorted(set(problems))


def _sources() -> list[Path]:
    return sorted(p for folder in SCANNED for p in (ROOT / folder).rglob("*.py"))


def test_no_sql_is_built_from_strings() -> None:
    files = _sources()
    assert any(p.name == "store.py" for p in files), "the scan found none of the service's files"
    problems = [msg for path in files
                for msg in find_string_built_sql(path.read_text(), str(path.relative_to(ROOT)))]  # fmt: skip
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(
    "snippet",
    [
        'conn.execute(text(f"SELECT * FROM runs WHERE id = \'{run_id}\'"))',
        'q = "DELETE FROM runs WHERE id = %s" % run_id\nconn.execute(q)',
        'cursor.copy(f"COPY samples ({cols}) FROM STDIN")',
        'conn.exec_driver_sql("UPDATE runs SET name = \'" + name + "\'")',
        'stmt = "SELECT name FROM runs WHERE project = {}".format(p)',
        'op.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")',
        'sql = f"where id = {x}"\nsession.execute(text(sql))',
        'conn.execute(query)\nquery = f"x {y}"',
    ],
)
def test_the_scan_catches_string_built_sql(snippet: str) -> None:
    assert find_string_built_sql(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        'conn.execute(text("SELECT 1"))',
        'conn.execute(text("SELECT * FROM runs WHERE id = :id"), {"id": run_id})',
        'cursor.copy(sql.SQL("COPY samples ({}) FROM STDIN").format(columns))',
        'log.warning(f"run {run_id} is {status}")',
        'raise Conflict(f"command {c.id} is {c.status}; it cannot become {to}")',
    ],
)
def test_the_scan_lets_safe_code_pass(snippet: str) -> None:
    assert find_string_built_sql(snippet) == [], snippet
