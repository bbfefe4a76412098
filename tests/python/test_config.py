"""Settings: keyword arguments over the environment over a TOML file; clear errors."""

import pytest

from tokenlane.config import ConfigError, load_settings


def test_settings_precedence_and_errors(tmp_path):
    cfg = tmp_path / "tokenlane.toml"
    cfg.write_text('[tokenlane]\npolicy = "fair"\ntpm = 1000\nbudget_usd = "2.50"\n'
                   '[tokenlane.tenant_budgets_usd]\nacme = 10\n')
    s = load_settings(cfg, environ={"TOKENLANE_TPM": "2000", "TOKENLANE_MAX_CONCURRENCY": "4"}, rpm=60)
    assert (s.policy, s.tpm, s.max_concurrency, s.rpm) == ("fair", 2000, 4, 60)
    assert str(s.budget_usd) == "2.50" and s.tenant_budgets_usd == {"acme": 10}
    with pytest.raises(ConfigError, match=r"TOKENLANE_TPM\): expected a positive integer, got 'lots'"):
        load_settings(environ={"TOKENLANE_TPM": "lots"})
    with pytest.raises(ConfigError, match="policy .*expected one of default, fifo"):
        load_settings(environ={}, policy="fastest")
    with pytest.raises(ConfigError, match="unknown tokenlane setting"):
        load_settings(environ={}, budget=5)
    bad = tmp_path / "bad.toml"
    bad.write_text("tpm = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, environ={})
