"""The README says what the code does: its detector table is the code's."""

from __future__ import annotations

from pathlib import Path

from rlkeel.server.policy import policy_table_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_detector_table_matches_the_default_policy() -> None:
    text = README.read_text()
    start = text.index("<!-- detector-table -->") + len("<!-- detector-table -->")
    end = text.index("<!-- /detector-table -->")
    assert text[start:end].strip() == policy_table_markdown().strip(), (
        "README detector table is stale: regenerate it with "
        "python -c 'from rlkeel.server.policy import policy_table_markdown as t; print(t())'"
    )


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    assert "<!-- test-command -->" in text
    assert text.index("rlkeel serve") < text.index("<!-- test-command -->")
