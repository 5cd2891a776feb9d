"""Configuration: typed reads from an injected mapping, every problem reported at once."""

from __future__ import annotations

import pytest
from metering.config import EnvReader, Secret, StoreSettings
from metering.errors import ConfigurationError


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
    env.text("MODEL")
    env.integer("MAX_TOKENS", 1_024)
    env.integer("LOOP_LIMIT", 4, minimum=1, maximum=10)
    env.number("TEMPERATURE", 1.0, maximum=1.0)
    env.choice("MODE", "safe", ("safe", "fast"))
    env.flag("VERBOSE", default=False)
    env.secret("API_KEY", required=True)

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

    assert env.integer("MAX_TOKENS", 1_024) == 2_048
    assert env.number("RATIO", 1.0) == 0.5
    assert env.flag("DEBUG", default=False) is True
    assert env.flag("QUIET", default=True) is True
    assert env.choice("MODE", "safe", ("safe", "fast")) == "fast"
    assert env.text("BLANK", "fallback") == "fallback"
    assert env.optional("BLANK") is None
    assert env.integer("UNSET", 7) == 7
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

    assert env.flag("FLAG", default=not expected) is expected
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
    assert not EnvReader({}).secret("APPWRITE_API_KEY")


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
    assert (settings.usage_events_table, settings.claims_table) == ("usage_events", "stripe_events")


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf"])
def test_non_finite_numbers_are_a_problem(raw: str) -> None:
    """NaN and infinity pass no bound check, so they are refused outright."""
    env = EnvReader({"TEMPERATURE": raw})

    assert env.number("TEMPERATURE", 1.0, maximum=2.0) == 1.0
    with pytest.raises(ConfigurationError, match="TEMPERATURE"):
        env.finish()
