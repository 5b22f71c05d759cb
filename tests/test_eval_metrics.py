"""Answer metrics of `dojo eval`, pinned to rouge_score and sacrebleu (the references) in English and Chinese."""

from __future__ import annotations

import pytest

from llm_dojo.eval.metrics import chrf, contains, exact_match, lcs_length, normalize, rouge_l, tokenize

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
sacrebleu = pytest.importorskip("sacrebleu")

# (answer, reference): word orders that differ, repeated words, partial overlaps, mixed scripts.
ENGLISH = [
    ("The capital of France is Paris.", "Paris is the capital of France."),
    ("I am Dojo, an AI assistant built by the LLM-Dojo project.", "My name is Dojo. I was built by the LLM-Dojo project."),
    ("the cat the cat sat", "the cat sat on the mat"),
    ("A week has seven days", "There are 7 days in a week."),
    ("no overlap here", "completely different words"),
    ("ab", "abc"),
]
CHINESE = [
    ("我是Dojo，由LLM-Dojo项目打造的AI助手。", "我的名字是Dojo，是LLM-Dojo项目开发的AI助手。"),
    ("法国的首都是巴黎。", "巴黎是法国的首都。"),
    ("一周有七天", "一周有7天。"),
    ("天空是蓝色的", "因为大气中的分子对蓝光的散射更强，所以天空看起来是蓝色的。"),
]


class OurTokenizer:
    """rouge_score accepts any object with tokenize(text): ours, so Chinese is compared character by character."""

    def tokenize(self, text):
        return tokenize(text)


@pytest.mark.parametrize("answer,reference", ENGLISH)
def test_rouge_l_equals_rouge_score_on_english(answer, reference):
    expected = rouge_scorer.RougeScorer(["rougeL"]).score(reference, answer)["rougeL"].fmeasure
    assert rouge_l(answer, reference) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("answer,reference", CHINESE + ENGLISH)
def test_rouge_l_equals_rouge_score_with_cjk_tokens(answer, reference):
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=OurTokenizer())
    assert rouge_l(answer, reference) == pytest.approx(scorer.score(reference, answer)["rougeL"].fmeasure, abs=1e-12)


def test_rouge_l_counts_the_longest_common_subsequence_not_shared_words():
    # Same words, reversed order: unigram overlap would say 1.0; the LCS is 1 of 3 words.
    assert rouge_l("c b a", "a b c") == pytest.approx(1 / 3)
    assert lcs_length(list("abcbdab"), list("bdcaba")) == 4


def test_rouge_score_default_tokenizer_drops_chinese_which_is_why_we_tokenize_per_character():
    answer, reference = CHINESE[0]
    assert rouge_scorer.RougeScorer(["rougeL"]).score(reference, answer)["rougeL"].fmeasure == 1.0  # only ASCII left
    assert rouge_l(answer, reference) == pytest.approx(22 / 31)


@pytest.mark.parametrize("answer,reference", ENGLISH + CHINESE + [("", "abc"), ("abc", ""), ("a", "a")])
def test_chrf_equals_sacrebleu_sentence_chrf(answer, reference):
    assert chrf(answer, reference) == pytest.approx(sacrebleu.sentence_chrf(answer, [reference]).score / 100,
                                                    abs=1e-12)


def test_chrf_weighs_recall_twice_as_much_as_precision():
    # Swapping answer and reference swaps precision and recall: F1 would not change, chrF's beta=2 does.
    superset, subset = "Paris, the capital of France", "Paris"
    high_recall, high_precision = chrf(superset, subset), chrf(subset, superset)
    assert high_recall > high_precision
    assert high_recall == pytest.approx(sacrebleu.sentence_chrf(superset, [subset]).score / 100, abs=1e-12)
    assert high_precision == pytest.approx(sacrebleu.sentence_chrf(subset, [superset]).score / 100, abs=1e-12)


def test_tokens_are_lowercased_words_and_single_cjk_characters_without_punctuation():
    assert tokenize("I'm Dojo，由LLM-Dojo项目打造！") == ["i", "m", "dojo", "由", "llm", "dojo", "项", "目", "打", "造"]
    assert tokenize("Hello,   WORLD... 42°C") == ["hello", "world", "42", "c"]
    assert tokenize("こんにちは 한국") == ["こ", "ん", "に", "ち", "は", "한", "국"]
    assert tokenize("— ! ？") == []


@pytest.mark.parametrize("answer,reference,expected", [
    ("Paris.", "paris", 1.0),
    ("  The   Paris! ", "Paris", 1.0),           # articles, case, spaces and punctuation do not count
    ("An apple", "apple", 1.0),
    ("巴黎。", "巴黎", 1.0),
    ("Paris, France", "Paris", 0.0),
    ("11", "eleven", 0.0),
    ("there", "the re", 0.0),                   # words are not glued together
])
def test_exact_match_compares_normalised_tokens(answer, reference, expected):
    assert exact_match(answer, reference) == expected


def test_normalise_drops_only_whole_articles():
    assert normalize("The theory of an anthem") == ["theory", "of", "anthem"]


def test_contains_finds_whole_words_and_any_keyword():
    assert contains("The capital of France is Paris.", "Paris") == 1.0
    assert contains("Parisian food is great", "Paris") == 0.0          # a whole token, not a substring
    assert contains("I'm Dojo, your assistant.", "ignored", keywords=["Dojo"]) == 1.0
    assert contains("There are seven days.", "7 days", keywords=["7", "seven"]) == 1.0
    assert contains("There are six days.", "7 days", keywords=["7", "seven"]) == 0.0
    assert contains("我是Dojo，由LLM-Dojo项目打造的AI助手。", "", keywords=["Dojo"]) == 1.0
    assert contains("法国的首都是巴黎。", "巴黎") == 1.0
    assert contains("the capital is Paris", "capital Paris") == 0.0   # the reference's tokens must be one run
