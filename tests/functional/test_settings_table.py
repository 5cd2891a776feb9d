"""The READMEs' settings tables are the ones ``python -m tools.settings_table`` writes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from metering import settings as declared

from localruntime import settings as runtime
from tools import settings_table
from tools.settings_table import BEGIN, END, meaning, table, tables, used_by

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "readme",
    ["README.md", *(f"functions/{f}/README.md" for f in declared.FUNCTIONS)],
)
def test_the_readme_table_is_written_from_the_declarations(readme: str) -> None:
    """Edit the declarations, then run `python -m tools.settings_table`; never the table."""
    path = ROOT / readme
    current = path.read_text(encoding="utf-8")

    assert current == settings_table.with_table(current, tables(ROOT)[path]), (
        f"{readme} is stale: run python -m tools.settings_table"
    )


def test_a_function_readme_lists_the_variables_that_function_reads() -> None:
    usage = tables(ROOT)[ROOT / "functions" / "usage" / "README.md"]

    assert "`APPWRITE_CLAIMS_TABLE`" in usage
    assert "`CHAT_MODEL`" not in usage
    assert "`STRIPE_SECRET_KEY`" not in usage


def test_a_row_gives_the_meaning_then_the_default_and_bounds_in_brackets() -> None:
    assert meaning(declared.CHAT_MAX_STEPS) == (
        "model calls per request in the tool loop [4; 1 to 16]"
    )
    assert meaning(runtime.EXECUTION_TIMEOUT_SECONDS).endswith("[30; 0.1 to 900]")
    assert meaning(declared.CHAT_MODEL).endswith("[`claude-sonnet-5-5`]")
    assert meaning(declared.APPWRITE_ENDPOINT).endswith("[required]")
    assert meaning(runtime.RUN_CRON).endswith("[`true`]")
    assert meaning(declared.CHAT_SYSTEM_PROMPT) == "system prompt [a short assistant prompt]"


def test_the_readers_read_as_all_functions_when_every_function_reads_it() -> None:
    assert used_by(declared.APPWRITE_DATABASE_ID) == "all functions"
    assert used_by(declared.APPWRITE_API_KEY) == "all functions, `tools.admin`"
    assert used_by(declared.STRIPE_API_BASE) == "stripe-webhook, monthly-reset-cron, billing"


def test_a_pipe_in_a_meaning_does_not_break_the_table() -> None:
    setting = declared.Setting.text("PIPED", "a|b", help="x | y", used_by=("tests",))

    row = table([setting], with_readers=False).splitlines()[-1]

    assert row == "| `PIPED` | x \\| y [`a\\|b`] |"


def _copy_of_the_repository(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "appwrite.json", tmp_path / "appwrite.json")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    for function_id in declared.FUNCTIONS:
        (tmp_path / "functions" / function_id).mkdir(parents=True)
        shutil.copy(
            ROOT / "functions" / function_id / "README.md", tmp_path / "functions" / function_id
        )
    return tmp_path


def test_check_reports_a_stale_table_and_writes_nothing(tmp_path: Path) -> None:
    root = _copy_of_the_repository(tmp_path)
    readme = root / "functions" / "usage" / "README.md"
    stale = readme.read_text(encoding="utf-8").replace("`koffers_db`", "`old_db`")
    readme.write_text(stale, encoding="utf-8")

    assert settings_table.main(["--check"], root=root) == 1
    assert readme.read_text(encoding="utf-8") == stale


def test_the_command_rewrites_only_the_table(tmp_path: Path) -> None:
    root = _copy_of_the_repository(tmp_path)
    readme = root / "README.md"
    before = readme.read_text(encoding="utf-8")
    head, _, rest = before.partition(BEGIN)
    _, _, tail = rest.partition(END)
    readme.write_text(f"{head}{BEGIN}\n| old table |\n{END}{tail}", encoding="utf-8")

    assert settings_table.main([], root=root) == 0

    assert readme.read_text(encoding="utf-8") == before
    assert settings_table.main(["--check"], root=root) == 0


def test_a_readme_without_the_markers_is_an_error(tmp_path: Path) -> None:
    root = _copy_of_the_repository(tmp_path)
    (root / "README.md").write_text("# no table here\n", encoding="utf-8")

    assert settings_table.main(["--check"], root=root) == 1
