"""Configuration: typed reads of declared settings from a mapping, every problem at once."""

from __future__ import annotations

from typing import Any

import pytest
from metering import settings as declared
from metering.config import EnvReader, Secret, Setting, StoreSettings
from metering.errors import ConfigurationError

# What every test declaration needs besides its name, default and bounds.
TEST: dict[str, Any] = {"help": "a setting of this test", "used_by": ("tests",)}


def test_all_problems_are_reported_together() -> None:
    """One ConfigurationError names every missing or invalid variable, not just the first."""
    env = EnvReader(
        {
            "MAX_TOKENS": "lots",
            "LOOP_LIMIT": "0",
            "TEMPERATURE": "3.5",
            "MODE": "turbo",
            "VERBOSE": "maybe",
        }
    )
    env.read(Setting.text("MODEL", None, **TEST))
    env.read(Setting.integer("MAX_TOKENS", 1_024, **TEST))
    env.read(Setting.integer("LOOP_LIMIT", 4, minimum=1, maximum=10, **TEST))
    env.read(Setting.number("TEMPERATURE", 1.0, maximum=1.0, **TEST))
    env.read(Setting.choice("MODE", "safe", ("safe", "fast"), **TEST))
    env.read(Setting.flag("VERBOSE", False, **TEST))
    env.read(Setting.secret("API_KEY", required=True, **TEST))

    with pytest.raises(ConfigurationError) as raised:
        env.finish()

    message = str(raised.value)
    for name in ("MODEL", "MAX_TOKENS", "LOOP_LIMIT", "TEMPERATURE", "MODE", "VERBOSE", "API_KEY"):
        assert name in message
    assert len(env.problems) == 7


def test_values_are_typed_and_defaults_fill_blanks() -> None:
    """Set values parse to their types; missing or blank ones take the default."""
    env = EnvReader(
        {"MAX_TOKENS": " 2048 ", "RATIO": "0.5", "DEBUG": "yes", "MODE": "FAST", "BLANK": "  "}
    )

    assert env.read(Setting.integer("MAX_TOKENS", 1_024, **TEST)) == 2_048
    assert env.read(Setting.number("RATIO", 1.0, **TEST)) == 0.5
    assert env.read(Setting.flag("DEBUG", False, **TEST)) is True
    assert env.read(Setting.flag("QUIET", True, **TEST)) is True
    assert env.read(Setting.choice("MODE", "safe", ("safe", "fast"), **TEST)) == "fast"
    assert env.read(Setting.text("BLANK", "fallback", **TEST)) == "fallback"
    assert env.read(Setting.optional("BLANK", **TEST)) is None
    assert env.read(Setting.integer("UNSET", 7, **TEST)) == 7
    env.finish()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("1", True, id="1"),
        pytest.param("TRUE", True, id="TRUE"),
        pytest.param("on", True, id="on"),
        pytest.param("0", False, id="0"),
        pytest.param("no", False, id="no"),
        pytest.param("Off", False, id="Off"),
    ],
)
def test_flags_accept_the_usual_spellings(raw: str, expected: bool) -> None:
    """Booleans read from the usual words, case-insensitively."""
    env = EnvReader({"FLAG": raw})

    assert env.read(Setting.flag("FLAG", not expected, **TEST)) is expected
    env.finish()


def test_secret_is_hidden_from_repr() -> None:
    """Neither a Secret nor settings holding one reveal the value in a repr or an f-string."""
    settings = StoreSettings.read(
        EnvReader(
            {
                "APPWRITE_FUNCTION_API_ENDPOINT": "https://cloud.example/v1",
                "APPWRITE_FUNCTION_PROJECT_ID": "p1",
                "APPWRITE_API_KEY": "standard_supersecret",
            }
        )
    )

    assert settings.appwrite_api_key.value == "standard_supersecret"
    assert "supersecret" not in repr(settings)
    assert "supersecret" not in f"{settings.appwrite_api_key}"
    assert repr(Secret("x")) == "Secret('***')"


def test_empty_secret_is_falsy() -> None:
    """An unset optional secret reads as absent."""
    assert not EnvReader({}).read(declared.APPWRITE_API_KEY)


def test_appwrite_store_settings_require_the_endpoint_and_project() -> None:
    """Deployed (the default backend), the injected endpoint and project id are required."""
    env = EnvReader({})
    StoreSettings.read(env)

    with pytest.raises(ConfigurationError, match="APPWRITE_FUNCTION_API_ENDPOINT") as raised:
        env.finish()
    assert "APPWRITE_FUNCTION_PROJECT_ID" in str(raised.value)


def test_store_settings_default_to_the_schemas_ids() -> None:
    """Given Appwrite's own variables, the database and table ids are the schema's names."""
    env = EnvReader(
        {
            "APPWRITE_FUNCTION_API_ENDPOINT": "http://appwrite.test/v1",
            "APPWRITE_FUNCTION_PROJECT_ID": "p",
        }
    )

    settings = StoreSettings.read(env)

    env.finish()
    assert (settings.database_id, settings.subscriptions_table) == ("koffers_db", "subscriptions")
    assert settings.usage_events_table == "usage_events"
    # The claims table's id is its declaration's alone (it is being renamed).
    assert settings.claims_table == declared.APPWRITE_CLAIMS_TABLE.default


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf"])
def test_non_finite_numbers_are_a_problem(raw: str) -> None:
    """NaN and infinity pass no bound check, so they are refused outright."""
    env = EnvReader({"TEMPERATURE": raw})

    assert env.read(Setting.number("TEMPERATURE", 1.0, maximum=2.0, **TEST)) == 1.0
    with pytest.raises(ConfigurationError, match="TEMPERATURE"):
        env.finish()


def test_a_value_out_of_bounds_is_reported_with_its_bounds_and_the_default_kept() -> None:
    """The bounds come from the declaration, and so does the value used meanwhile."""
    env = EnvReader({"CHAT_MAX_STEPS": "17", "CRON_RESERVATION_TTL_SECONDS": "59"})

    assert env.read(declared.CHAT_MAX_STEPS) == declared.CHAT_MAX_STEPS.default
    assert env.read(declared.CRON_RESERVATION_TTL_SECONDS) == 900
    assert env.problems == [
        "CHAT_MAX_STEPS must be >= 1 and <= 16, got '17'",
        "CRON_RESERVATION_TTL_SECONDS must be >= 60, got '59'",
    ]


def test_a_reader_may_do_without_a_required_value() -> None:
    """The local runtime reads the chat's required key as optional: unset means offline."""
    env = EnvReader({})

    assert not env.read(declared.ANTHROPIC_API_KEY, required=False)
    env.finish()
    env.read(declared.ANTHROPIC_API_KEY)
    assert env.problems == ["ANTHROPIC_API_KEY is required"]


def test_names_without_a_default_can_be_read_by_name() -> None:
    """A required value has no default to repeat, so it can be read by its name alone."""
    env = EnvReader({"APPWRITE_ENDPOINT": " http://a.test/v1 "})

    assert env.text("APPWRITE_ENDPOINT") == "http://a.test/v1"
    assert env.text("APPWRITE_PROJECT_ID") == ""
    assert env.optional("APPWRITE_PROJECT_ID") is None
    assert not env.secret("APPWRITE_API_KEY")
    env.secret("APPWRITE_API_KEY", required=True)
    assert env.problems == ["APPWRITE_PROJECT_ID is required", "APPWRITE_API_KEY is required"]


@pytest.mark.parametrize(
    "declare",
    [
        pytest.param(lambda: Setting.integer("PAGE", 0, minimum=1, **TEST), id="below-minimum"),
        pytest.param(lambda: Setting.number("RATE", 3.0, maximum=2.0, **TEST), id="above-maximum"),
        pytest.param(lambda: Setting.choice("MODE", "slow", ("fast",), **TEST), id="no-choice"),
        pytest.param(lambda: Setting.text("lower_case", "x", **TEST), id="bad-name"),
        pytest.param(lambda: Setting.text("NO_HELP", "x", help="", used_by=("t",)), id="no-help"),
        pytest.param(lambda: Setting.text("NOBODY", "x", help="h", used_by=()), id="no-reader"),
    ],
)
def test_a_declaration_that_contradicts_itself_is_refused(declare: Any) -> None:
    """A default outside its own bounds, or a setting nobody reads or explains, cannot exist."""
    with pytest.raises(ValueError, match="setting"):
        declare()
