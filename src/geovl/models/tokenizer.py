"""Offline tokenizers for tiny models: a small byte-level BPE trained on remote-sensing Q&A text.

The small tokenizer is built exactly like Qwen's (NFC, the Qwen2 pre-tokenizer regex, byte-level
BPE, ByteLevel decoder, the Qwen special tokens in Qwen order) but with a vocabulary of about
800 tokens trained on the corpus below, so a tiny model's embedding table stays small. Because
the byte alphabet is part of the vocabulary it encodes any text, Chinese included. Short answers
(yes/no/是/否/有/没有/rural/urban/农村/城镇/…) are guaranteed to be single tokens: one token per
answer is what the demo models learn to emit, and a split answer makes exact-match scoring and
logit comparison needlessly hard.

The real Qwen vocabulary lives in :mod:`geovl.models.qwen_vocab`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

# The Qwen special tokens, in the order (and so with the relative ids) of the real Qwen2/2.5/3 vocab.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2's pre-tokenizer regex (digits are split one by one).
QWEN2_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

CHAT_TEMPLATE_PATH = Path(__file__).with_name("chat_template.jinja")

# Answers a model is expected to emit as one token (each is one pre-token under the Qwen2 regex).
SINGLE_TOKEN_ANSWERS = (
    "yes", "no", "Yes", "No", "是", "否", "有", "没有",
    "rural", "urban", "农村", "城镇",
    "轻微", "中等", "严重", "增加", "减少",
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9",
)  # fmt: skip

SMALL_VOCAB_SIZE = 800

# ---- the embedded training corpus ------------------------------------------------------------
_CLASSES_EN = [
    "water", "buildings", "roads", "farmland", "forest", "grassland", "bare land", "residential buildings",
    "commercial buildings", "a river", "a lake", "wetland", "cropland", "trees", "a bridge", "a parking lot",
]  # fmt: skip
_CLASSES_ZH = [
    "水体",
    "建筑",
    "道路",
    "耕地",
    "林地",
    "草地",
    "裸地",
    "住宅建筑",
    "商业建筑",
    "河流",
    "湖泊",
    "湿地",
    "桥梁",
    "停车场",
]

_EN_QA = [
    ("Is there {c} in the image?", "yes"),
    ("Is there {c} in this image?", "no"),
    ("Are there {c} in the image?", "yes"),
    ("Is there a road in the image?", "no"),
    ("Is there water?", "yes"),
    ("How many buildings are there in the image?", "3"),
    ("How many buildings are in the image?", "12"),
    ("How many roads are there?", "0"),
    ("How many houses can you count?", "7"),
    ("What is the area covered by buildings?", "10632 m²"),
    ("What is the area of the farmland in km²?", "4.5 km²"),
    ("What is the area of the forest in hectares?", "250 ha"),
    ("How large is the water body?", "1200 m²"),
    ("Are there more buildings than water areas?", "no"),
    ("Is the number of roads equal to the number of buildings?", "no"),
    ("Are there more residential buildings than commercial buildings?", "yes"),
    ("Is it a rural or an urban area?", "rural"),
    ("Is this a rural or urban area?", "urban"),
    ("Is it a rural or urban area?", "rural"),
    ("Has the built-up area increased between the two images?", "yes"),
    ("What changed between the two images?", "New buildings were added and farmland decreased."),
    ("How much forest was lost between the two dates?", "35 ha"),
    ("How many new buildings appeared?", "5"),
    ("Did the water area decrease?", "no"),
    ("What is the risk level of the landslide?", "severe"),
    ("What is the damage level?", "minor"),
    ("Describe the image.", "An urban area with dense buildings, roads and a small river."),
    ("What is the main land cover?", "farmland"),
]
_ZH_QA = [
    ("图中是否有{c}？", "是"),
    ("图中有没有{c}？", "没有"),
    ("影像中有没有{c}？", "有"),
    ("这张影像中是否存在{c}？", "否"),
    ("图中有多少栋建筑？", "6"),
    ("图中有多少条道路？", "2"),
    ("影像中建筑的数量是多少？", "14"),
    ("耕地面积是多少平方公里？", "3.2平方公里"),
    ("林地面积是多少公顷？", "45公顷"),
    ("裸地面积有多少亩？", "120亩"),
    ("水体面积是多少平方米？", "980平方米"),
    ("建筑的面积是多少？", "10632平方米"),
    ("这是农村还是城镇？", "农村"),
    ("该区域属于农村还是城镇？", "城镇"),
    ("建筑是否多于水体？", "否"),
    ("两期影像之间新增了多少建筑？", "8"),
    ("两期影像相比，水体面积减少了多少？", "减少了2.5公顷"),
    ("耕地面积是增加还是减少？", "减少"),
    ("林地面积是增加还是减少？", "增加"),
    ("发生了什么变化？", "新增建筑，耕地减少。"),
    ("灾害风险等级是什么？", "严重"),
    ("滑坡的风险等级是轻微、中等还是严重？", "中等"),
    ("洪水的风险等级是多少？", "轻微"),
    ("请描述这张遥感影像。", "这是一张城镇的遥感影像，有密集的建筑、道路和一条河流。"),
    ("主要的土地覆盖类型是什么？", "耕地"),
]
_FREE_TEXT = [
    "You are a helpful assistant.",
    "You are a remote sensing expert. Answer briefly.",
    "你是一名遥感专家，请简要回答。",
    "Answer with yes or no.",
    "Answer with a number.",
    "请用是或否回答。",
    "请用数字回答。",
    "Picture 1: Picture 2: Video 1:",
    "system user assistant",
    "The image shows farmland, forest, water, buildings, roads and bare land.",
    "影像显示了耕地、林地、水体、建筑、道路和裸地。",
    "The area is 12 km², 350 ha, 4500 m² or 60 mu.",
    "面积为12平方公里、350公顷、4500平方米或60亩。",
    "Sentinel-2 Landsat GeoTIFF RGB NIR NDVI band 1 2 3 4 5 6 7 8 9 10",
    "卫星影像 遥感 多光谱 高光谱 植被 城市 乡村 变化检测",
]


def training_corpus() -> list[str]:
    """The embedded corpus: Q&A lines in English and Chinese, answers repeated on their own."""
    lines: list[str] = []
    for q, a in _EN_QA:
        for c in _CLASSES_EN if "{c}" in q else [""]:
            lines.append(q.format(c=c))
            lines.append(a)
    for q, a in _ZH_QA:
        for c in _CLASSES_ZH if "{c}" in q else [""]:
            lines.append(q.format(c=c))
            lines.append(a)
    lines += _FREE_TEXT * 4
    lines += list(SINGLE_TOKEN_ANSWERS) * 20
    return lines


# ---- building ----------------------------------------------------------------------------------
def _bpe_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]):
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    tok = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def _force_single_tokens(vocab: dict[str, int], merges: list[tuple[str, str]], words) -> None:
    """Append the merges that make each word one token (in place).

    Appended merges rank after every trained merge, so they only fire once a word has reached
    the pieces the trained merges leave it in; that turns exactly those pieces into one token."""
    for word in words:
        tok = _bpe_tokenizer(vocab, merges)
        pre = tok.pre_tokenizer.pre_tokenize_str(word)
        if len(pre) != 1:
            raise ValueError(f"{word!r} is not one pre-token; it cannot become a single token")
        pieces = tok.encode(word).tokens
        while len(pieces) > 1:
            left, right = pieces[0], pieces[1]
            merges.append((left, right))
            vocab.setdefault(left + right, len(vocab))
            pieces = [left + right] + pieces[2:]


@lru_cache(maxsize=4)
def small_vocab_and_merges(vocab_size: int = SMALL_VOCAB_SIZE) -> tuple[str, str]:
    """Train the small BPE (deterministic); returns (vocab json, merges json) for caching."""
    from tokenizers import Tokenizer, pre_tokenizers, trainers
    from tokenizers.models import BPE

    tok = Tokenizer(BPE(fuse_unk=False))
    base = _bpe_tokenizer({}, [])
    tok.normalizer, tok.pre_tokenizer, tok.decoder = base.normalizer, base.pre_tokenizer, base.decoder
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    merges = [tuple(m) if not isinstance(m, str) else tuple(m.split(" ", 1)) for m in model["merges"]]
    _force_single_tokens(vocab, merges, SINGLE_TOKEN_ANSWERS)
    return json.dumps(vocab, ensure_ascii=False), json.dumps(merges, ensure_ascii=False)


def qwen2_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], chat_template: str | None = None):
    """A ``Qwen2Tokenizer`` (fast) from byte-level vocab/merges, with the Qwen specials appended
    in Qwen order right after the vocabulary, eos ``<|im_end|>``, pad ``<|endoftext|>``."""
    from transformers import Qwen2Tokenizer

    vocab = dict(vocab)
    first = len(vocab)
    if any(t in vocab for t in SPECIAL_TOKENS):
        raise ValueError("the base vocabulary already contains Qwen special tokens")
    for i, t in enumerate(SPECIAL_TOKENS):
        vocab[t] = first + i
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(m) for m in merges],
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=32768,
        chat_template=chat_template if chat_template is not None else CHAT_TEMPLATE_PATH.read_text(encoding="utf-8"),
    )
    for i, t in enumerate(SPECIAL_TOKENS):
        got = tok.convert_tokens_to_ids(t)
        if got != first + i:
            raise RuntimeError(f"special token {t} got id {got}, expected {first + i}")
    return tok


def build_small_tokenizer(vocab_size: int = SMALL_VOCAB_SIZE):
    """The small offline tokenizer (same output for the same ``vocab_size``, every time)."""
    vocab_json, merges_json = small_vocab_and_merges(vocab_size)
    tok = qwen2_tokenizer(json.loads(vocab_json), [tuple(m) for m in json.loads(merges_json)])
    for word in SINGLE_TOKEN_ANSWERS:
        ids = tok.encode(word, add_special_tokens=False)
        if len(ids) != 1:  # pragma: no cover - guarded by _force_single_tokens
            raise RuntimeError(f"{word!r} is {len(ids)} tokens in the small tokenizer")
    return tok


def build_tokenizer(vocab: str = "small"):
    """``"small"`` (trained offline, ~800 tokens) or ``"qwen"`` (the real 151,643-rank vocabulary)."""
    if vocab == "small":
        return build_small_tokenizer()
    if vocab == "qwen":
        from .qwen_vocab import build_qwen_tokenizer

        return build_qwen_tokenizer()
    raise ValueError(f"unknown vocabulary {vocab!r}; use 'small' or 'qwen'")
