"""Labels with a SentencePiece-style tokenizer: "▁" for spaces, byte fallback (<0x..>) for unknown characters.

Llama-2, Mistral and Gemma tokenize this way, unlike SmolLM2's byte-level BPE used elsewhere in the tests: a
space is glued to the next word ("▁Hello"), a character outside the vocabulary becomes one token per UTF-8 byte,
and the tokenizer adds a BOS by itself while these templates also write it. We build such a tokenizer here, from
a small English + Chinese corpus (no download), and check the trained characters against spans computed by hand.
"""

from __future__ import annotations

import copy
import json

import pytest

from llm_dojo.data.chat_format import resolve_chat_format
from llm_dojo.data.encode import IGNORE_INDEX, encode_conversation
from llm_dojo.templates import get_template
from trained_spans import trained_char_spans

ENGLISH = [
    "The capital of France is Paris.", "What is the capital of France?", "Water boils at one hundred degrees.",
    "A week has seven days.", "Please answer in one short sentence.", "How many legs does a spider have?",
    "A spider has eight legs.", "The quick brown fox jumps over the lazy dog.", "Thank you very much for your help.",
    "Can you tell me a short story?", "Once upon a time there was a small village.", "Say hello to the new student.",
    "Hello, how are you today?", "I am fine, thank you.", "The sun rises in the east and sets in the west.",
    "Learning a new language takes time and practice.", "What is two plus two?", "Two plus two is four.",
    "Dragons are creatures from old stories.", "Tea is popular in China and in England.",
]
CHINESE = [
    "法国的首都是巴黎。", "法国的首都是哪里？", "水在一百度时沸腾。", "一个星期有七天。", "请用一句话回答。",
    "蜘蛛有几条腿？", "蜘蛛有八条腿。", "谢谢你的帮助。", "你能给我讲一个短故事吗？", "从前有一个小村庄。",
    "你好，你今天怎么样？", "我很好，谢谢。", "太阳从东方升起，从西方落下。", "学习一门新语言需要时间和练习。",
    "二加二等于几？", "二加二等于四。", "龙是古老故事中的动物。", "茶在中国和英国都很受欢迎。",
]
SPECIALS = ["<unk>", "<s>", "</s>"]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def corpus() -> list[str]:
    """A few hundred lines: each sentence, and pairs of sentences in both languages."""
    lines = ENGLISH + CHINESE
    for i, english in enumerate(ENGLISH):
        lines.append(f"{english} {CHINESE[i % len(CHINESE)]}")
        lines.append(f"{CHINESE[(i * 7) % len(CHINESE)]}{ENGLISH[(i * 3) % len(ENGLISH)]}")
        lines.append(f"{ENGLISH[(i + 5) % len(ENGLISH)]} {english}")
    for i, chinese in enumerate(CHINESE):
        lines.append(chinese + CHINESE[(i + 3) % len(CHINESE)])
    return lines * 2


def build_sentencepiece_tokenizer():
    """A BPE tokenizer shaped like Llama-2's: Metaspace "▁", byte fallback, <s>/</s>, built from `corpus()`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    draft = Tokenizer(models.BPE(unk_token="<unk>"))
    draft.pre_tokenizer = metaspace
    draft.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS,
                                                            show_progress=False))
    learned = draft.get_vocab()
    # As in SentencePiece models: specials, then the 256 byte tokens, then the learned pieces.
    pieces = SPECIALS + BYTE_TOKENS + sorted((t for t in learned if t not in SPECIALS), key=learned.__getitem__)
    merges = [tuple(m) for m in json.loads(draft.to_str())["model"]["merges"]]
    backend = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=merges, unk_token="<unk>",
                                   byte_fallback=True, fuse_unk=True))
    backend.pre_tokenizer = metaspace
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def sentencepiece_tokenizer():
    return build_sentencepiece_tokenizer()


def family_sentencepiece_tokenizer(base, spec):
    """The tokenizer with a family's special tokens and template; like the real ones, it adds BOS on its own."""
    tokenizer = copy.deepcopy(base)
    specials = [t for t in list(spec.special_tokens) + [spec.bos_token, spec.eos_token, spec.terminator] if t]
    tokenizer.add_special_tokens({"additional_special_tokens": sorted(set(specials) - set(SPECIALS))})
    for key, value in spec.special_tokens_map().items():
        setattr(tokenizer, key, value)
    tokenizer.chat_template = spec.chat_template
    tokenizer.add_bos_token = True  # rebuilds the post-processor with this family's BOS
    return tokenizer


# Each family's rendering of user/assistant turns, written out by hand. Returns the text and the character spans
# [start, end) that must be trained: the answer and its terminator (with the space Llama-2 puts between them).
def render_llama2(turns):
    text, spans = "", []
    for user, answer in turns:
        text += f"<s>[INST] {user} [/INST] "
        spans.append((len(text), len(text) + len(f"{answer} </s>")))
        text += f"{answer} </s>"
    return text, spans


def render_mistral_v03(turns):
    text, spans = "<s>", []
    for user, answer in turns:
        text += f"[INST] {user}[/INST] "
        spans.append((len(text), len(text) + len(f"{answer}</s>")))
        text += f"{answer}</s>"
    return text, spans


def render_gemma(turns):
    text, spans = "<bos>", []
    for user, answer in turns:
        text += f"<start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n"
        spans.append((len(text), len(text) + len(f"{answer}<end_of_turn>")))
        text += f"{answer}<end_of_turn>\n"
    return text, spans


RENDERERS = {"llama2": render_llama2, "mistral-v0.3": render_mistral_v03, "gemma": render_gemma}

CONVERSATIONS = {
    "english": [("What is the capital of France?", "The capital of France is Paris."),
                ("How many legs does a spider have?", "A spider has eight legs.")],
    "chinese": [("法国的首都是哪里？", "法国的首都是巴黎。"), ("蜘蛛有几条腿？", "蜘蛛有八条腿。")],
    # 🙂 and 𝄞 (4 UTF-8 bytes each) and 鑫 are not in the corpus: byte fallback, also at the answer's edges.
    "byte_fallback": [("Say hello with an emoji 🙂", "🙂 Hello, 你好 🙂"), ("What is 𝄞?", "𝄞 is a clef, 鑫𝄞")],
}


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", sorted(RENDERERS))
def test_sentencepiece_labels_cover_exactly_answers_and_terminators(name, conversation, sentencepiece_tokenizer):
    spec = get_template(name)
    tokenizer = family_sentencepiece_tokenizer(sentencepiece_tokenizer, spec)
    turns = CONVERSATIONS[conversation]
    messages = [m for user, answer in turns
                for m in ({"role": "user", "content": user}, {"role": "assistant", "content": answer})]
    text, expected = RENDERERS[name](turns)
    assert tokenizer.apply_chat_template(messages, tokenize=False) == text  # the hand rendering is the official one

    sample = encode_conversation(messages, tokenizer, resolve_chat_format(tokenizer, name), 4096)
    spans = trained_char_spans(tokenizer, text, sample)
    assert len(spans) == len(expected), (spans, expected)
    for (start, end), (want_start, want_end) in zip(spans, expected):
        # Exact, except that SentencePiece glues the space before a word to it ("▁The"): that space is trained.
        assert end == want_end and start in (want_start, want_start - 1), (text[start:end], text[want_start:want_end])
        if start < want_start:
            assert text[start] == " "
    # Decoding each trained run of tokens gives back the answer and terminator, bytes fused into characters.
    runs, run = [], []
    for token, label in zip(sample.input_ids + [None], sample.labels + [IGNORE_INDEX]):
        if label != IGNORE_INDEX:
            run.append(token)
        elif run:
            runs, run = runs + [run], []
    assert [tokenizer.decode(r) for r in runs] == [text[s:e] for s, e in expected]
    trained_ids = [t for r in runs for t in r]
    if conversation == "byte_fallback":
        byte_tokens = [t for t in tokenizer.convert_ids_to_tokens(trained_ids) if t.startswith("<0x")]
        assert len(byte_tokens) >= 12, byte_tokens  # 🙂 🙂 𝄞 𝄞 = 16 bytes at least go through byte fallback


@pytest.mark.parametrize("name", sorted(RENDERERS))
def test_sentencepiece_bos_is_written_once_by_the_template_not_again_by_the_tokenizer(name, sentencepiece_tokenizer):
    spec = get_template(name)
    tokenizer = family_sentencepiece_tokenizer(sentencepiece_tokenizer, spec)
    bos_id = tokenizer.convert_tokens_to_ids(spec.bos_token)
    assert tokenizer("Hi")["input_ids"][0] == bos_id  # the tokenizer adds BOS when asked for special tokens
    turns = CONVERSATIONS["english"]
    messages = [m for user, answer in turns
                for m in ({"role": "user", "content": user}, {"role": "assistant", "content": answer})]
    text, _ = RENDERERS[name](turns)
    sample = encode_conversation(messages, tokenizer, resolve_chat_format(tokenizer, name), 4096)
    assert sample.input_ids[0] == bos_id and sample.input_ids[1] != bos_id
    assert sample.input_ids.count(bos_id) == text.count(spec.bos_token)  # Llama-2: one per turn; others: one
    assert sample.labels[0] == IGNORE_INDEX
