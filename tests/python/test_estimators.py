"""Output-token estimators: the contract API, caps, unknown models, messages, online learning,
save/load, evaluation, bad input and threads."""

from __future__ import annotations

import json
import math
import threading

import pytest

import tokenlane
from tokenlane import Estimate, Estimator, HeuristicEstimator, HistoryEstimator, LearnedEstimator
from tokenlane.estimators import flatten_prompt, train

KINDS = [
    pytest.param(lambda: HeuristicEstimator(), id="heuristic"),
    pytest.param(lambda: LearnedEstimator(), id="learned"),
    pytest.param(lambda: HistoryEstimator(), id="history"),
    pytest.param(lambda: Estimator.default(), id="blend"),
]


@pytest.mark.parametrize("make", KINDS)
def test_estimate_shape_and_caps(make):
    est = make()
    e = est.estimate("Write a detailed essay of 3000 words about the history of Rome.", "gpt-4o")
    assert isinstance(e, Estimate)
    assert 1 <= e.p50 <= e.p90
    assert e.quantile == 0.9
    assert isinstance(e.source, str) and e.source
    capped = est.estimate("Write a detailed essay of 3000 words about Rome.", "gpt-4o", max_tokens=40)
    assert capped.p50 <= 40 and capped.p90 <= 40
    # The model's maximum output from the price table caps too (gpt-4o: 16,384 in the shipped table).
    big = est.estimate("Write a 100000 word novel, the whole text, chapter by chapter.", "gpt-4o")
    assert big.p90 <= tokenlane.Pricing.default().max_output_tokens("gpt-4o")
    assert est.estimate("x", "gpt-4o", model_max_output=3).p90 <= 3


@pytest.mark.parametrize("make", KINDS)
def test_unknown_models_use_the_generic_prior(make):
    e = make().estimate("Tell me about tigers.", "my-self-hosted-model-v7")
    assert 10 <= e.p50 <= 2000
    assert e.p90 <= 32768


def test_the_contract_example():
    est = tokenlane.Estimator.default()
    e = est.estimate([{"role": "user", "content": "Hi"}], "gpt-4o", max_tokens=None, context=None, input_tokens=None)
    assert e.p50 >= 1 and e.p90 >= e.p50 and e.quantile == 0.9
    est.observe([{"role": "user", "content": "Hi"}], "gpt-4o", 12, context={"route": "/chat"}, input_tokens=8)


def test_messages_are_flattened_in_both_shapes():
    openai = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Name a colour."}, {"type": "image_url", "image_url": {}}]},
    ]
    anthropic = [
        {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]},
        {"role": "assistant", "content": [{"type": "tool_use", "input": {"q": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "content": [{"type": "text", "text": "ok"}]}]},
    ]
    flat = flatten_prompt(openai)
    assert flat == "system\x1fYou are terse.\x1euser\x1fName a colour."
    assert "ok" in flatten_prompt(anthropic)
    assert flatten_prompt("plain") == "plain"
    est = Estimator.default()
    assert est.estimate(openai, "gpt-4o").p50 >= 1
    assert est.estimate(anthropic, "claude-sonnet-4-5").p50 >= 1


def test_cues_move_the_learned_prediction():
    est = LearnedEstimator()

    def p50(prompt: str) -> int:
        return est.estimate(prompt, "gpt-4o").p50

    plain = p50("Tell me about the French revolution.")
    assert p50("Answer with one word: the capital of France?") < plain / 4
    assert p50("Write a detailed essay about the French revolution.") > plain
    assert p50("Summarize the French revolution in 2 sentences.") < plain


@pytest.mark.parametrize("make", [KINDS[1], KINDS[2], KINDS[3]])
def test_online_learning_improves_a_repeated_template(make):
    est = make()
    template = "Extract the invoice number from this email and answer with the number only. Email: {}"

    def error(i: int) -> float:
        return abs(math.log(est.estimate(template.format(f"Invoice {i} attached."), "gpt-4o-mini").p50 / 9))

    before = error(0)
    for i in range(80):
        est.observe(template.format(f"Invoice {i} attached."), "gpt-4o-mini", 8 + i % 3)
    after = error(999)
    assert after < before / 2
    assert after < 0.3


def test_history_sources_and_backoff():
    est = HistoryEstimator(min_count=2)
    ctx = {"route": "/support", "tenant": "acme"}
    assert est.estimate("Reply to ticket 1", "gpt-4o", context=ctx).source == "heuristic"
    for i in range(2):
        est.observe(f"Reply to ticket {i}", "gpt-4o", 120, context=ctx)
    assert est.estimate("Reply to ticket 7", "gpt-4o", context=ctx).source == "history:template"
    assert est.estimate("Something new", "gpt-4o", context=ctx).source == "history:route"
    assert est.estimate("Something new", "gpt-4o", context={"tenant": "acme"}).source == "history:tenant"
    assert est.estimate("Something new", "gpt-4o").source == "history:model"


@pytest.mark.parametrize("make", KINDS)
def test_save_load_round_trip(make, tmp_path):
    est = make()
    for i in range(30):
        est.observe(f"Question {i % 4}: explain item {i}", "gpt-4o", 40 + 17 * (i % 6), context={"route": "/q"})
    path = tmp_path / "est.json"
    est.save(path)
    loaded = type(est).load(path)
    assert type(loaded) is type(est) and loaded.kind == est.kind
    generic = Estimator.load(path)
    assert type(generic) is type(est)
    for i in range(12):
        prompt = f"Question {i % 6}: explain item {i}"
        assert est.estimate(prompt, "gpt-4o", context={"route": "/q"}) == loaded.estimate(
            prompt, "gpt-4o", context={"route": "/q"}
        )
    assert json.loads(path.read_text())["format"] == "tokenlane.estimator"


def test_load_checks_kind_and_version(tmp_path):
    path = tmp_path / "h.json"
    HistoryEstimator().save(path)
    with pytest.raises(tokenlane.InvalidArgumentError, match="holds a history estimator"):
        LearnedEstimator.load(path)
    state = json.loads(path.read_text())
    state["version"] = 7
    path.write_text(json.dumps(state))
    with pytest.raises(tokenlane.InvalidArgumentError, match="unsupported estimator format version 7"):
        Estimator.load(path)
    path.write_text("{}")
    with pytest.raises(tokenlane.InvalidArgumentError, match="not a tokenlane estimator"):
        Estimator.load(path)
    with pytest.raises(tokenlane.TokenlaneError):
        Estimator.load(tmp_path / "missing.json")


@pytest.mark.parametrize(
    "call",
    [
        lambda e: e.estimate("hi", ""),
        lambda e: e.estimate("hi", None),
        lambda e: e.estimate(42, "gpt-4o"),
        lambda e: e.estimate({"role": "user"}, "gpt-4o"),
        lambda e: e.estimate([{"role": "user", "content": 5}], "gpt-4o"),
        lambda e: e.estimate(["not a message"], "gpt-4o"),
        lambda e: e.estimate("hi", "gpt-4o", max_tokens=0),
        lambda e: e.estimate("hi", "gpt-4o", max_tokens=-3),
        lambda e: e.estimate("hi", "gpt-4o", input_tokens=1.5),
        lambda e: e.estimate("hi", "gpt-4o", context={"user": "x"}),
        lambda e: e.estimate("hi", "gpt-4o", context={"route": 3}),
        lambda e: e.estimate("hi", "gpt-4o", context="route"),
        lambda e: e.observe("hi", "gpt-4o", -1),
        lambda e: e.observe("hi", "gpt-4o", None),
    ],
)
def test_bad_input_raises_a_clear_value_error(call):
    with pytest.raises(ValueError):
        call(Estimator.default())


def test_fit_and_train_learn_from_data():
    rows = []
    for i in range(300):
        poem = i % 2 == 0
        rows.append(
            {
                "prompt": f"Compose verses about topic {i}" if poem else f"Give the capital city of country {i}",
                "model": "m",
                "output_tokens": 400 if poem else 8,
            }
        )
    est = train(rows, epochs=3)
    assert isinstance(est, LearnedEstimator)
    assert est.estimate("Compose verses about the sea", "m").p50 > 5 * est.estimate("Give the capital city of Peru", "m").p50
    assert est.verbosity("m") != 1.0 and est.verbosity("never-seen") == 1.0
    with pytest.raises(ValueError):
        est.fit(rows, epochs=0)
    with pytest.raises(ValueError, match="cannot be fitted"):
        tokenlane.estimators._fit(HistoryEstimator()._core, tokenlane.evaluation.load_records(rows), 1, 1)
    blend = Estimator.default(learned=est)
    assert blend.estimate("Compose verses about the sea", "m").p50 > 100


def _dataset():
    pd = pytest.importorskip("pandas")
    rows = []
    for i in range(120):
        kind = i % 3
        prompt = ["Answer yes or no: is {} even?", "Write a long essay about {}.", "List 5 facts about {}."][kind]
        for model, scale in (("gpt-4o", 1.0), ("claude-sonnet-4-5", 1.5)):
            rows.append(
                {
                    "prompt": prompt.format(i),
                    "model": model,
                    "output_tokens": int([3, 900, 150][kind] * scale) + i % 7,
                    "route": f"/r{kind}",
                }
            )
    return pd.DataFrame(rows)


def test_evaluate_on_a_dataframe_cold_and_online():
    df = _dataset()
    cold = tokenlane.evaluate(HeuristicEstimator(), df)
    assert list(cold.columns) == [
        "n", "kendall_tau", "spearman", "mae", "median_rel_error", "p90_coverage", "us_per_estimate",
    ]
    assert set(cold.index) == {"gpt-4o", "claude-sonnet-4-5", "(all)"}
    assert cold.loc["gpt-4o", "n"] == 120
    est = Estimator.default()
    before = est.to_json()
    online = tokenlane.evaluate(est, df, online=True)
    assert est.to_json() == before  # evaluation replays on a copy
    learned_cold = tokenlane.evaluate(LearnedEstimator(), df)
    assert online.loc["(all)", "kendall_tau"] > 0.6
    assert online.loc["(all)", "median_rel_error"] < learned_cold.loc["(all)", "median_rel_error"]
    assert (online["us_per_estimate"] > 0).all()


def test_evaluate_reads_json_jsonl_and_alpacaeval_files(tmp_path):
    pytest.importorskip("pandas")
    alpaca = [
        {"instruction": "Say hi.", "output": "Hi there! How can I help you today?", "generator": "model-a"},
        {"instruction": "Count to five.", "output": "1, 2, 3, 4, 5", "generator": "model-a"},
        {"instruction": "Name a fruit.", "output": "Apple.", "generator": "model-a"},
    ]
    (tmp_path / "model_outputs.json").write_text(json.dumps(alpaca))
    res = tokenlane.evaluate(LearnedEstimator(), tmp_path / "model_outputs.json")
    assert res.loc["model-a", "n"] == 3
    lines = [json.dumps({"prompt": "Hello", "model": "m", "output_tokens": 5, "max_tokens": 3})] * 2
    (tmp_path / "data.jsonl").write_text("\n".join(lines))
    preds = tokenlane.evaluation.replay(LearnedEstimator(), tmp_path / "data.jsonl")
    assert (preds["p90"] <= 3).all()
    both = tokenlane.evaluate(HeuristicEstimator(), tmp_path)  # a directory of files
    assert both.loc["(all)", "n"] == 5


def test_evaluate_rejects_bad_data(tmp_path):
    pytest.importorskip("pandas")
    with pytest.raises(ValueError, match="needs a prompt"):
        tokenlane.evaluate(HeuristicEstimator(), [{"model": "m", "output_tokens": 3}])
    with pytest.raises(ValueError, match="output_tokens"):
        tokenlane.evaluate(HeuristicEstimator(), [{"prompt": "p", "model": "m"}])
    with pytest.raises(ValueError, match="output_tokens must be"):
        tokenlane.evaluate(HeuristicEstimator(), [{"prompt": "p", "model": "m", "output_tokens": -2}])
    with pytest.raises(ValueError, match="no records"):
        tokenlane.evaluate(HeuristicEstimator(), [])
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ValueError, match="not JSON"):
        tokenlane.evaluate(HeuristicEstimator(), bad)


def test_plot_predictions_draws_on_log_axes():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    ax = tokenlane.plot_predictions(LearnedEstimator(), _dataset(), model="gpt-4o")
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert len(ax.collections) == 2
    with pytest.raises(ValueError, match="no records"):
        tokenlane.plot_predictions(LearnedEstimator(), _dataset(), model="nope")
    import matplotlib.pyplot as plt

    plt.close("all")


def test_threads_share_one_estimator():
    est = Estimator.default()
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(300):
                prompt = f"thread {t} asks question {i % 5}"
                if i % 3 == 0:
                    est.observe(prompt, "gpt-4o", 10 + i, context={"tenant": f"t{t}"})
                else:
                    assert est.estimate(prompt, "gpt-4o", context={"tenant": f"t{t}"}).p50 >= 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors


@pytest.mark.parametrize("make", [KINDS[1], KINDS[2], KINDS[3]])
def test_a_truncated_response_is_a_lower_bound_not_an_observation(make):
    # A template that answers ~400 tokens; then clients start sending max_tokens=100, so every
    # response is cut at 100 (finish_reason "length"). Taken as observations the cuts would teach
    # "100"; as lower bounds they say nothing new about an estimate already above 100.
    prompt = "Write a detailed travel guide to Lisbon for a first visit."
    aware, naive = make(), make()
    for est in (aware, naive):
        for i in range(30):
            est.observe(prompt, "gpt-4o", 380 + i)
    learned = aware.estimate(prompt, "gpt-4o").p50
    for _ in range(60):
        aware.observe(prompt, "gpt-4o", 100, max_tokens=100)
        naive.observe(prompt, "gpt-4o", 100)
    assert naive.estimate(prompt, "gpt-4o").p50 < 0.5 * learned  # the naive path learns the cap
    assert aware.estimate(prompt, "gpt-4o").p50 >= 0.9 * learned
    # finish_reason alone (the cap unknown to the caller) censors too; a cut answer above the
    # estimate still pushes it up.
    short = make()
    for _ in range(60):
        short.observe("Reply with one word: yes or no?", "gpt-4o", 50, finish_reason="length")
    assert short.estimate("Reply with one word: yes or no?", "gpt-4o").p50 >= 45


def test_replay_censors_records_cut_by_their_max_tokens():
    prompt = "Write a detailed travel guide to Lisbon for a first visit."
    rows = [{"prompt": prompt, "model": "gpt-4o", "output_tokens": 100, "max_tokens": 100}] * 40
    rows += [{"prompt": prompt, "model": "gpt-4o", "output_tokens": 400}]
    records = tokenlane.evaluation.load_records(rows)
    assert records.truncated[:2] == [True, True] and records.truncated[-1] is False
    last = tokenlane.evaluation.replay(Estimator.default(), records, online=True).iloc[-1]
    naive = [{k: v for k, v in r.items() if k != "max_tokens"} for r in rows]
    last_naive = tokenlane.evaluation.replay(Estimator.default(), naive, online=True).iloc[-1]
    assert last["p50"] > last_naive["p50"]


@pytest.mark.parametrize(
    "short, long",
    [
        ("Erkläre kurz, was ein Vulkan ist.", "Schreibe einen ausführlichen Aufsatz über Vulkane."),
        ("Explique brièvement en un mot : oui ou non ?", "Écris un essai détaillé sur les volcans."),
        ("Responde con una palabra: sí o no.", "Escribe un ensayo detallado sobre los volcanes."),
        ("Ответь одним словом: да или нет?", "Напиши подробно эссе о вулканах."),
        ("用一句话简要回答：火山是什么？", "请详细介绍火山的形成过程。"),
        ("一言で答えてください。", "火山について詳しく説明してください。"),
    ],
)
def test_length_cues_work_beyond_english(short, long):
    est = LearnedEstimator()
    assert est.estimate(short, "gpt-4o").p50 * 2 < est.estimate(long, "gpt-4o").p50


def test_counted_lengths_beyond_english():
    est = LearnedEstimator()
    few = est.estimate("Fasse den Text in zwei Sätzen zusammen: Der Rhein ist ein Fluss.", "gpt-4o").p50
    many = est.estimate("Schreibe einen Text mit 800 Wörtern über den Rhein.", "gpt-4o").p50
    assert few < many
    assert est.estimate("写一篇800字的文章", "gpt-4o").p50 > 2 * est.estimate("用20字回答", "gpt-4o").p50
