import pytest
from pydantic import ValidationError

from edgefleet.shared.errors import ConfigError
from edgefleet.shared.settings import AgentSettings, DispatcherSettings, check_environment, settings_table


def test_typos_are_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="EDGEFLEET_REDIS_URL"):
        check_environment({"EDGEFLEET_REDIS_ULR": "redis://x"})


def test_known_names_and_test_variables_pass() -> None:
    check_environment(
        {
            "EDGEFLEET_REDIS_URL": "x",
            "EDGEFLEET_DISPATCHER_URL": "x",
            "EDGEFLEET_AGENT_REGION": "eu-west",
            "EDGEFLEET_TEST_REDIS_URL": "x",
            "PATH": "/bin",
        }
    )


def test_unknown_keyword_is_rejected() -> None:
    with pytest.raises(ValidationError):
        DispatcherSettings(redis_ulr="x")  # type: ignore[call-arg]


def test_an_empty_file_setting_is_unset() -> None:
    # As docker compose passes an unset ${EDGEFLEET_CONFIG_FILE:-}: no file, never the folder ".".
    settings = DispatcherSettings(config_file="", api_keys_file=" ")
    assert settings.config_file is None and settings.api_keys_file is None


def test_region_names_are_checked() -> None:
    with pytest.raises(ValidationError):
        AgentSettings(region="EU West")


def test_every_setting_is_documented() -> None:
    rows = settings_table()
    assert all(description for _, _, description in rows)
    assert ("EDGEFLEET_FLEET_TOKEN", "(required)") in {(v, d) for v, d, _ in rows}


def test_readme_configuration_table_lists_every_setting() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [var for var, _, _ in settings_table() if f"| `{var}` |" not in readme]
    assert missing == [], f"README's configuration table lacks {missing}; regenerate it from `edgefleet config`"
