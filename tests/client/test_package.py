"""The client package: its public names, its dependencies, and the token kept out of sight."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import rlkeel.client as api
from rlkeel.client import AsyncClient, Client, schemas

CLIENT_DIR = Path(api.__file__).parent
ALLOWED_THIRD_PARTY = {"httpx", "pydantic", "pydantic_core"}
SECRET = "rk_secret-token-never-shown"


def test_all_names_resolve_and_include_every_schema() -> None:
    assert len(set(api.__all__)) == len(api.__all__)
    for name in api.__all__:
        assert getattr(api, name) is not None
    assert set(schemas.__all__) <= set(api.__all__)
    assert {"Client", "AsyncClient", "RlkeelError", "APIError", "TransportError"} <= set(
        api.__all__
    )


def test_exception_tree() -> None:
    assert issubclass(api.ServiceUnavailableError, api.ServerError)
    for name in ("BadRequestError", "AuthenticationError", "PermissionDeniedError",
                 "NotFoundError", "ConflictError", "PayloadTooLargeError",
                 "UnprocessableEntityError", "ServerError"):  # fmt: skip
        assert issubclass(getattr(api, name), api.APIError)
    assert issubclass(api.APIError, api.RlkeelError)
    assert issubclass(api.RequestTimeoutError, api.TransportError)
    assert issubclass(api.TransportError, api.RlkeelError)
    assert not issubclass(api.TransportError, api.APIError)


def _imported_top_level_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_client_imports_only_pydantic_httpx_and_the_standard_library() -> None:
    for path in CLIENT_DIR.glob("*.py"):
        for module in _imported_top_level_modules(path):
            top = module.split(".")[0]
            if module.startswith("rlkeel."):
                assert module.startswith("rlkeel.client"), f"{path.name} imports {module}"
            else:
                assert top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY, (
                    f"{path.name} imports {module}"
                )


def test_importing_the_client_loads_neither_server_nor_torch() -> None:
    code = ("import sys, rlkeel.client; "
            "bad = [m for m in sys.modules if m.startswith(('rlkeel.server', 'rlkeel.trainer',"
            " 'torch', 'fastapi', 'sqlalchemy'))]; print(bad); assert not bad")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


async def test_token_is_not_in_repr() -> None:
    with Client("http://127.0.0.1:1", token=SECRET) as c:
        assert SECRET not in repr(c) and SECRET not in str(c)
        assert SECRET not in repr(c._http) and SECRET not in repr(c._http.headers)
        assert repr(c) == "Client(base_url='http://127.0.0.1:1', timeout=5.0, retries=3)"
    async with AsyncClient("http://127.0.0.1:1/", token=SECRET) as ac:
        assert SECRET not in repr(ac) and "AsyncClient(" in repr(ac)
        assert ac.base_url == "http://127.0.0.1:1"


def test_options_are_checked_and_keyword_only() -> None:
    with pytest.raises(TypeError):
        Client("http://x", SECRET)  # type: ignore[misc]
    for bad in ({"timeout": 0}, {"retries": -1}, {"backoff": -0.1}):
        with pytest.raises(ValueError):
            Client("http://x", token=SECRET, **bad)  # type: ignore[arg-type]


def test_register_run_takes_a_model_or_fields_not_both() -> None:
    from .conftest import run_create

    with Client("http://127.0.0.1:1", token=SECRET) as c, pytest.raises(TypeError):
        c.register_run(run_create(), name="other")
