"""tokenlane.Pricing: known prices, provider usage conventions, tiers, batch, names, configs, exact sums."""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path

import pytest

import tokenlane
from tokenlane import Cost, InvalidArgumentError, Pricing
from tokenlane.pricing import DEFAULT_TABLE, batch_discount_percent

REPO = Path(__file__).resolve().parents[2]

# A hand-written table in LiteLLM's schema (not LiteLLM's data), with the entries it must survive.
LITELLM_TABLE = {
    "sample_spec": {"input_cost_per_token": 0.0, "max_input_tokens": "max input tokens, if specified"},
    "image-model": {"litellm_provider": "openai", "mode": "image_generation", "output_cost_per_image": 0.04},
    "acme/big-model": {
        "litellm_provider": "acme",
        "mode": "chat",
        "input_cost_per_token": 1e-06,
        "output_cost_per_token": 4e-06,
        "cache_read_input_token_cost": 1e-07,
        "input_cost_per_token_above_128k_tokens": 2e-06,
        "output_cost_per_token_above_128k_tokens": 6e-06,
        "input_cost_per_token_batches": 4e-07,
        "max_input_tokens": 1000000,
        "max_tokens": 8192,
    },
}


@pytest.fixture(scope="module")
def pricing() -> Pricing:
    return Pricing.default()


def test_known_prices(pricing: Pricing) -> None:
    c = pricing.cost("gpt-4o", input_tokens=1_000_000)
    assert c.usd == 2.5
    assert c.decimal == Decimal("2.5")
    assert c.usd_str == "2.5"
    assert str(c) == "$2.5"
    assert c.total_pico_usd == 2_500_000_000_000
    assert c.total_micro_usd == Decimal("2500000")
    assert pricing.cost("gpt-4o", output_tokens=1_000_000).usd == 10.0
    assert pricing.cost("gpt-4o-mini", input_tokens=1_000_000, output_tokens=1_000_000).decimal == Decimal("0.75")
    assert pricing.cost("claude-haiku-4-5", input_tokens=1000, output_tokens=1000).decimal == Decimal("0.006")
    assert pricing.max_output_tokens("gpt-4o") == 16384
    assert pricing.max_input_tokens("gemini-2.5-pro") == 1048576
    assert pricing.provider("claude-opus-4-1") == "anthropic"
    assert "gpt-5-mini" in pricing and "gpt-99" not in pricing


def test_every_shipped_price_has_a_source_and_date() -> None:
    table = json.loads(DEFAULT_TABLE.read_text())
    models = {k: v for k, v in table.items() if not k.startswith("_")}
    assert len(models) >= 25
    for key, entry in models.items():
        assert entry["source"].startswith("https://"), key
        assert len(entry["as_of"]) == 10, key
        assert entry["litellm_provider"], key
    providers = {e["litellm_provider"] for e in models.values()}
    assert {"openai", "anthropic", "gemini", "mistral", "groq"} <= providers
    assert sorted(Pricing.default().models()) == sorted(models)


def test_cached_token_conventions_differ_by_provider(pricing: Pricing) -> None:
    # The same three numbers mean different prompts. OpenAI: the 1000 prompt tokens include 800 cached.
    openai = pricing.cost_of_usage(
        "gpt-4o", {"prompt_tokens": 1000, "completion_tokens": 100, "prompt_tokens_details": {"cached_tokens": 800}}
    )
    assert openai.input_tokens == 1000 and openai.cached_input_tokens == 800
    assert openai.breakdown()["input"] == Decimal("0.0005")  # 200 uncached × $2.50/M
    assert openai.breakdown()["cached_input"] == Decimal("0.001")  # 800 × $1.25/M
    assert openai.decimal == Decimal("0.0025")
    assert openai == pricing.cost("gpt-4o", input_tokens=1000, cached_input_tokens=800, output_tokens=100)
    # Anthropic: the 1000 input tokens EXCLUDE the 800 cache reads, so the prompt had 1800 tokens.
    anthropic = pricing.cost_of_usage(
        "claude-sonnet-4-5", {"input_tokens": 1000, "cache_read_input_tokens": 800, "output_tokens": 100}
    )
    assert anthropic.input_tokens == 1800 and anthropic.cached_input_tokens == 800
    assert anthropic.decimal == Decimal("0.00474")  # 1000 × $3/M + 800 × $0.30/M + 100 × $15/M
    assert anthropic == pricing.cost("claude-sonnet-4-5", input_tokens=1800, cached_input_tokens=800, output_tokens=100)
    # Cache writes (Anthropic), a whole response, a JSON string.
    writes = pricing.cost_of_usage(
        "claude-sonnet-4-5",
        json.dumps({"usage": {"input_tokens": 10, "cache_creation_input_tokens": 1000, "output_tokens": 0}}),
    )
    assert writes.cache_write_tokens == 1000 and writes.breakdown()["cache_write"] == Decimal("0.00375")


def test_responses_api_and_reasoning(pricing: Pricing) -> None:
    responses = pricing.cost_of_usage(
        "o3",
        {
            "input_tokens": 1000,
            "input_tokens_details": {"cached_tokens": 500},
            "output_tokens": 1000,
            "output_tokens_details": {"reasoning_tokens": 900},
        },
    )
    assert responses.input_tokens == 1000 and responses.reasoning_tokens == 900
    # o3 has no separate reasoning price: reasoning tokens bill as output.
    assert responses.breakdown()["reasoning"] == Decimal("0.0072")
    assert responses.decimal == Decimal("0.001") + Decimal("0.00025") + Decimal("0.008")
    with pytest.raises(tokenlane.InvalidArgumentError):
        pricing.cost("o3", output_tokens=10, reasoning_tokens=11)


def test_usage_from_sdk_objects(pricing: Pricing) -> None:
    class Usage:  # what the openai / anthropic SDKs return (pydantic models)
        def model_dump(self) -> dict:
            return {"prompt_tokens": 10, "completion_tokens": 5}

    assert pricing.cost_of_usage("gpt-4o", Usage()) == pricing.cost("gpt-4o", input_tokens=10, output_tokens=5)
    with pytest.raises(tokenlane.InvalidArgumentError, match="unrecognized usage"):
        pricing.cost_of_usage("gpt-4o", {"tokens": 3})


def test_usage_dicts_of_every_shape_read_as_their_json(pricing: Pricing) -> None:
    """A usage dict goes to the core as JSON written without json.dumps: whatever it holds, the cost
    is the one of json.dumps's text, and what json.dumps refuses is refused as before."""
    class Usage(dict):
        pass

    usages = [
        {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        {"prompt_tokens": 10, "completion_tokens": 5, "note": "répondu \"vite\"\n", "ratio": 0.5, "ok": True,
         "none": None, "ids": [1, 2, (3, 4)], "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0}},
        Usage(prompt_tokens=7, completion_tokens=2),
    ]
    for usage in usages:
        assert pricing.cost_of_usage("gpt-4o", usage) == pricing.cost_of_usage("gpt-4o", json.dumps(usage))
    with pytest.raises(tokenlane.InvalidArgumentError, match="not JSON-serialisable"):
        pricing.cost_of_usage("gpt-4o", {"prompt_tokens": 10, "completion_tokens": {1, 2}})


def test_long_context_tier_prices_the_whole_request(pricing: Pricing) -> None:
    at = pricing.cost("gemini-2.5-pro", input_tokens=200_000, output_tokens=1000)
    assert at.long_context_above == 0 and at.decimal == Decimal("0.26")
    above = pricing.cost("gemini-2.5-pro", input_tokens=200_001, output_tokens=1000)
    assert above.long_context_above == 200_000
    assert above.breakdown()["input"] == Decimal("2.5") * 200_001 / 1_000_000
    assert above.breakdown()["output"] == Decimal("0.015")
    sonnet = pricing.cost("claude-sonnet-4-5", input_tokens=300_000, cached_input_tokens=100_000)
    assert sonnet.decimal == Decimal("1.2") + Decimal("0.06")  # 200k × $6/M + 100k × $0.60/M


def test_batch_discount(pricing: Pricing) -> None:
    full = pricing.cost("gpt-4o", input_tokens=10_000, output_tokens=10_000)
    batch = pricing.cost("gpt-4o", input_tokens=10_000, output_tokens=10_000, batch=True)
    assert batch.batch_discounted and batch.total_pico_usd * 2 == full.total_pico_usd
    for model in ("gpt-5", "claude-sonnet-4-5", "gemini-2.5-flash", "mistral-large-latest"):
        full = pricing.cost(model, input_tokens=1000, output_tokens=1000)
        assert pricing.cost(model, input_tokens=1000, output_tokens=1000, batch=True).total_pico_usd * 2 == full.total_pico_usd
    groq = pricing.cost("groq/llama-3.3-70b-versatile", input_tokens=1000, batch=True)
    assert not groq.batch_discounted
    assert batch_discount_percent("openai") == 50 and batch_discount_percent("groq") is None


def test_unknown_model_error_says_how_to_fix_it(pricing: Pricing) -> None:
    with pytest.raises(tokenlane.UnknownNameError) as info:
        pricing.cost("my-finetune-7b", input_tokens=1)
    message = str(info.value)
    assert "my-finetune-7b" in message and "input_per_mtok" in message and "fallback" in message
    assert isinstance(info.value, KeyError)
    priced = pricing.with_overrides({"fallback": {"input_per_mtok": 10, "output_per_mtok": 30}})
    c = priced.cost("my-finetune-7b", input_tokens=1_000_000)
    assert c.fallback and c.decimal == Decimal("10") and c.provider == "fallback"
    assert not priced.cost("gpt-4o", input_tokens=1).fallback
    assert not pricing.has_fallback and priced.has_fallback


def test_model_names_resolve(pricing: Pricing) -> None:
    assert pricing.resolve("openai/gpt-4o") == "gpt-4o"
    assert pricing.resolve("claude-sonnet-4-5-20250929") == "claude-sonnet-4-5-20250929"  # its own entry
    assert pricing.resolve("claude-opus-4-1-20250805") == "claude-opus-4-1"  # no entry: the snapshot date goes
    assert pricing.resolve("gemini-2.5-flash") == "gemini/gemini-2.5-flash"
    assert pricing.resolve("claude-3-5-haiku-latest") == "claude-3-5-haiku-20241022"
    assert pricing.resolve("llama-3.3-70b-versatile") == "groq/llama-3.3-70b-versatile"
    assert pricing.resolve("nope") is None


def test_sums_are_exact(pricing: Pricing) -> None:
    one = pricing.cost("gpt-5-nano", input_tokens=3, cached_input_tokens=1, output_tokens=1)
    total = sum(pricing.cost("gpt-5-nano", input_tokens=3, cached_input_tokens=1, output_tokens=1) for _ in range(100_000))
    assert isinstance(total, Cost)
    assert total.total_pico_usd == 100_000 * one.total_pico_usd
    assert total.decimal == Decimal("0.0505")
    assert total.input_tokens == 300_000
    floats = 0.0
    for _ in range(100_000):
        floats += one.usd
    assert floats != 0.0505  # what summing floats would have said


def test_load_litellm_file(tmp_path: Path) -> None:
    path = tmp_path / "model_prices_and_context_window.json"
    path.write_text(json.dumps(LITELLM_TABLE))
    p = Pricing.load(path)
    assert p.models() == ["acme/big-model"]
    assert p.cost("big-model", input_tokens=1000).decimal == Decimal("0.001")
    assert p.cost("acme/big-model", input_tokens=200_000).decimal == Decimal("0.4")  # > 128k tier
    assert p.cost("acme/big-model", input_tokens=1000, batch=True).decimal == Decimal("0.0004")
    assert p.max_output_tokens("acme/big-model") == 8192  # legacy max_tokens
    assert Pricing.from_dict(LITELLM_TABLE).models() == ["acme/big-model"]
    entry = p.entry("acme/big-model")
    assert entry["per_mtok"]["input"] == Decimal("1") and entry["long_context"][0]["above_tokens"] == 128_000


def test_load_tokenlane_config(tmp_path: Path) -> None:
    config = {
        "models": {
            "my-llama": {"input_per_mtok": 0.2, "output_per_mtok": "0.6", "provider": "self_hosted", "max_output_tokens": 4096},
            "gpt-4o": {"input_per_mtok": 2.0},
        },
        "aliases": {"chat-default": "my-llama"},
    }
    path = tmp_path / "pricing.json"
    path.write_text(json.dumps(config))
    p = Pricing.load(path)  # extends the default table
    assert p.cost("my-llama", input_tokens=1_000_000, output_tokens=1_000_000).decimal == Decimal("0.8")
    assert p.cost("chat-default", output_tokens=1_000_000).decimal == Decimal("0.6")
    assert p.provider("my-llama") == "self_hosted" and p.max_output_tokens("chat-default") == 4096
    assert p.cost("gpt-4o", input_tokens=1_000_000).decimal == Decimal("2")  # patched input
    assert p.cost("gpt-4o", output_tokens=1_000_000).decimal == Decimal("10")  # output kept
    assert "claude-haiku-4-5" in p
    alone = Pricing.from_dict({"extends": "none", "models": config["models"] | {"gpt-4o": {"input_per_mtok": 2, "output_per_mtok": 8}}})
    assert alone.models() == ["gpt-4o", "my-llama"]
    # Relative "extends" paths are read next to the config.
    (tmp_path / "litellm.json").write_text(json.dumps(LITELLM_TABLE))
    (tmp_path / "over.json").write_text(json.dumps({"extends": "litellm.json", "models": {"big-model": {"output_per_mtok": 5}}}))
    over = Pricing.load(tmp_path / "over.json")
    assert over.cost("acme/big-model", output_tokens=1_000_000).decimal == Decimal("5")
    with pytest.raises(tokenlane.InvalidArgumentError, match="input_per_mtoken"):
        Pricing.from_dict({"models": {"x": {"input_per_mtoken": 1}}})
    with pytest.raises(tokenlane.UnknownNameError):
        Pricing.load(tmp_path / "missing.json")


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib")
def test_load_toml_config(tmp_path: Path) -> None:
    path = tmp_path / "pricing.toml"
    path.write_text('[models.my-llama]\ninput_per_mtok = 0.2\noutput_per_mtok = 0.6\nprovider = "self_hosted"\n')
    assert Pricing.load(path).cost("my-llama", input_tokens=1_000_000).decimal == Decimal("0.2")


def test_overrides_leave_the_original_alone(pricing: Pricing) -> None:
    cheaper = pricing.with_overrides({"models": {"claude-sonnet-4-5": {"input_per_mtok": 1}}})
    assert cheaper.cost("claude-sonnet-4-5", input_tokens=100_000).decimal == Decimal("0.1")
    assert pricing.cost("claude-sonnet-4-5", input_tokens=100_000).decimal == Decimal("0.3")
    # The long-context tier keeps its own prices unless the override sets "long_context".
    assert cheaper.cost("claude-sonnet-4-5", input_tokens=300_000).decimal == Decimal("1.8")
    assert Pricing.default() is pricing


def test_bad_counts_are_refused(pricing: Pricing) -> None:
    with pytest.raises(tokenlane.InvalidArgumentError, match="exceed input_tokens"):
        pricing.cost("gpt-4o", input_tokens=5, cached_input_tokens=6)
    with pytest.raises(tokenlane.InvalidArgumentError):
        pricing.cost("gpt-4o", input_tokens=-1)
    with pytest.raises(tokenlane.InvalidArgumentError):
        pricing.cost("gpt-4o", input_tokens=1.5)  # type: ignore[arg-type]


def test_prices_cli_checks_a_file_before_use(tmp_path, capsys) -> None:
    from tokenlane.cli import main

    path = tmp_path / "litellm.json"
    path.write_text(json.dumps({
        "gpt-4o": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 3e-06,
                   "output_cost_per_token": 1e-05},
        "brand-new": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1e-06,
                      "output_cost_per_token": 2e-06},
        "dall-e": {"litellm_provider": "openai", "mode": "image_generation", "output_cost_per_image": 0.04},
    }))
    assert main(["prices", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 models priced, 1 entries skipped" in out and "1 new" in out
    assert "gpt-4o: " in out and "per_mtok.input: 2.5 -> 3" in out


def test_generated_table_is_what_the_generator_gives(tmp_path) -> None:
    """scripts/gen_prices.py on a small LiteLLM-shaped file: the filters, the provenance, the
    checked entries winning, and a host's copy of a vendor's model left out."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_prices", REPO / "scripts" / "gen_prices.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    source = {
        "sample_spec": {"mode": "chat"},
        "vendor-model": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1e-06,
                         "output_cost_per_token": 2e-06, "supports_vision": True, "max_input_tokens": 1000,
                         "input_cost_per_token_batches": 5e-07, "source": "https://vendor.example/pricing"},
        "deepinfra/acme/vendor-model": {"litellm_provider": "deepinfra", "mode": "chat",
                                        "input_cost_per_token": 9e-07, "output_cost_per_token": 9e-07},
        "together_ai/acme/open-model": {"litellm_provider": "together_ai", "mode": "chat",
                                        "input_cost_per_token": 2e-07, "output_cost_per_token": 2e-07},
        "azure/vendor-model": {"litellm_provider": "azure", "mode": "chat", "input_cost_per_token": 1e-06},
        "dall-e": {"litellm_provider": "openai", "mode": "image_generation", "output_cost_per_image": 0.04},
        "gpt-4o": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 9e-06,
                   "output_cost_per_token": 9e-06},
    }
    table = json.loads(gen.render(source, "test.json", "2026-01-02"))
    keys = {k for k in table if not k.startswith("_")}
    assert {"vendor-model", "together_ai/acme/open-model", "gpt-4o"} <= keys
    assert not {"deepinfra/acme/vendor-model", "azure/vendor-model", "dall-e", "sample_spec"} & keys
    assert table["vendor-model"] == {
        "litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06,
        "input_cost_per_token_batches": 5e-07, "max_input_tokens": 1000, "source": "https://vendor.example/pricing",
        "as_of": "2026-01-02", "price_file": "test.json"}
    assert table["gpt-4o"]["input_cost_per_token"] == 2.5e-06  # the checked entry wins
    loaded = Pricing.from_dict(table)
    assert loaded.cost("vendor-model", input_tokens=1000, batch=True).decimal == Decimal("0.0005")


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": 1008, "completion_tokens": 7, "total_tokens": 1015},
    {"prompt_tokens": 100, "completion_tokens": 50, "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": None},
     "completion_tokens_details": {"reasoning_tokens": 10, "ratio": 0.5, "flags": [True, False, "é\"\\\n"]}},
    {"input_tokens": 10, "cache_read_input_tokens": 90, "cache_creation_input_tokens": 5, "output_tokens": 3},
    {"input_tokens": 10, "output_tokens": 3, "input_tokens_details": {"cached_tokens": 4}},
    {"promptTokenCount": 10, "candidatesTokenCount": 3, "thoughtsTokenCount": 2},
    {"usage": {"prompt_tokens": 5, "completion_tokens": 1}},
    {1: 2, "prompt_tokens": 5, "completion_tokens": 1},          # a non-str key: json.dumps's route
    {"prompt_tokens": 5, "completion_tokens": 1, "x": (1, 2)},  # a tuple: json.dumps's route
    {"prompt_tokens": 5, "completion_tokens": 1, "x": 10**30},  # past int64: json.dumps's route
])
@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-pro"])
def test_cost_of_usage_dict_equals_its_json(usage, model) -> None:
    """A usage dict crosses to the core without json.dumps; the cost is the JSON text's."""
    pricing = Pricing.default()
    from_dict = pricing.cost_of_usage(model, usage)
    assert from_dict == pricing.cost_of_usage(model, json.dumps(usage))
    assert hash(from_dict) == hash(pricing.cost_of_usage(model, json.dumps(usage)))


@pytest.mark.parametrize("usage", [{"prompt_tokens": -1}, {"prompt_tokens": 1.5}, {"nothing": 1}])
def test_cost_of_usage_dict_refuses_what_its_json_refuses(usage) -> None:
    with pytest.raises(InvalidArgumentError) as from_dict:
        Pricing.default().cost_of_usage("gpt-4o-mini", usage)
    with pytest.raises(InvalidArgumentError) as from_json:
        Pricing.default().cost_of_usage("gpt-4o-mini", json.dumps(usage))
    assert str(from_dict.value) == str(from_json.value)
