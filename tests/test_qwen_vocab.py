"""The real Qwen vocabulary (dashscope wheel's qwen.tiktoken) reproduces real Qwen2.5-VL ids."""

from __future__ import annotations

import base64

import numpy as np
import pytest

SYSTEM_PREFIX_IDS = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198]
QWEN_SPECIAL_IDS = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|object_ref_start|>": 151646,
    "<|object_ref_end|>": 151647, "<|box_start|>": 151648, "<|box_end|>": 151649, "<|quad_start|>": 151650,
    "<|quad_end|>": 151651, "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655, "<|video_pad|>": 151656,
}  # fmt: skip


@pytest.fixture(scope="module")
def qwen_tok(qwen_tiktoken):
    from geovl.models.qwen_vocab import build_qwen_tokenizer

    return build_qwen_tokenizer(qwen_tiktoken)


@pytest.mark.qwen_vocab
def test_real_ids(qwen_tok):
    assert len(qwen_tok) == 151_657
    assert qwen_tok.encode("Hello, world!") == [9707, 11, 1879, 0]
    assert {t: qwen_tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_IDS} == QWEN_SPECIAL_IDS
    assert qwen_tok.encode("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n") == SYSTEM_PREFIX_IDS
    assert qwen_tok.encode("user") == [872] and qwen_tok.encode("assistant") == [77091]
    s = "图中是否有水体？这是农村还是城镇？耕地面积约3.5平方公里。"
    assert qwen_tok.decode(qwen_tok.encode(s)) == s
    assert qwen_tok.eos_token == "<|im_end|>" and qwen_tok.pad_token == "<|endoftext|>" and qwen_tok.bos_token is None


@pytest.mark.qwen_vocab
def test_chat_template_matches_the_official_qwen2_vl_rendering(qwen_tok):
    msgs = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]},
        {"role": "assistant", "content": "A red square."},
    ]
    # written by hand from the official Qwen2-VL / Qwen2.5-VL chat template
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is shown?<|im_end|>\n"
        "<|im_start|>assistant\nA red square.<|im_end|>\n"
    )
    assert qwen_tok.apply_chat_template(msgs, tokenize=False) == expected
    enc = qwen_tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids = enc["input_ids"]
    answer = qwen_tok.encode("A red square.")
    assert ids == (
        SYSTEM_PREFIX_IDS
        + [151644, 872, 198, 151652, 151655, 151653, 3838, 374, 6839, 30, 151645, 198]
        + [151644, 77091, 198] + answer + [151645, 198]
    )  # fmt: skip
    assert [i for i, m in zip(ids, enc["assistant_masks"]) if m] == answer + [151645]
    gen = qwen_tok.apply_chat_template(msgs[:1], tokenize=True, add_generation_prompt=True, return_dict=True)[
        "input_ids"
    ]
    assert gen == ids[: len(gen)] and gen[-3:] == [151644, 77091, 198]


@pytest.mark.qwen_vocab
def test_tiny_model_with_real_vocab_loads_and_generates(tiny_model_dir):
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    d = tiny_model_dir("qwen2.5-vl", vocab="qwen")
    model = AutoModelForImageTextToText.from_pretrained(d).eval()
    proc = AutoProcessor.from_pretrained(d)
    assert type(proc).__name__ == "Qwen2_5_VLProcessor"
    cfg = model.config
    assert (cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id) == (
        151655,
        151656,
        151652,
        151653,
    )
    assert cfg.text_config.vocab_size == 151_657 and cfg.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    msgs = [
        {"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "What is shown?"}]},
        {"role": "assistant", "content": "A red square."},
    ]
    enc = proc.apply_chat_template(
        msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )
    ids = enc["input_ids"][0].tolist()
    assert ids[: len(SYSTEM_PREFIX_IDS)] == SYSTEM_PREFIX_IDS
    assert ids.count(151655) == 64  # 224² at patch 14, merge 2
    assert (
        proc.tokenizer.decode([i for i, m in zip(ids, enc["assistant_masks"][0].tolist()) if m])
        == "A red square.<|im_end|>"
    )
    prompt = proc.apply_chat_template(
        msgs[:1], tokenize=True, return_dict=True, add_generation_prompt=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 2


def test_conversion_equals_transformers_tiktoken_converter(monkeypatch):
    """Our ranks → merges equals transformers' TikTokenConverter on a hand-made rank table."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from geovl.models.qwen_vocab import ranks_to_vocab_merges

    ranks = {bytes([b]): b for b in range(256)}
    for tok in [b"th", b"he", b"the", b" t", b" the", b"\xe6\x98", b"\xe6\x98\xaf", b"in", b"ing", b" thing"]:
        ranks[tok] = len(ranks)
    monkeypatch.setattr(TikTokenConverter, "load_tiktoken_bpe", staticmethod(lambda url: ranks))
    want = TikTokenConverter(vocab_file="x").extract_vocab_merges_from_model("x")
    assert ranks_to_vocab_merges(ranks) == want


@pytest.mark.qwen_vocab
def test_conversion_equals_transformers_on_the_real_file(qwen_tiktoken, monkeypatch):
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from geovl.models.qwen_vocab import _qwen_vocab_merges, load_ranks

    ranks = load_ranks(qwen_tiktoken)
    monkeypatch.setattr(TikTokenConverter, "load_tiktoken_bpe", staticmethod(lambda url: ranks))
    want_vocab, want_merges = TikTokenConverter(vocab_file="x").extract_vocab_merges_from_model("x")
    vocab, merges = _qwen_vocab_merges(str(qwen_tiktoken.resolve()))
    assert vocab == want_vocab and merges == want_merges


def test_missing_vocab_gives_a_clear_error(monkeypatch, tmp_path, capsys):
    import importlib.util

    from geovl.models import qwen_vocab

    monkeypatch.setenv("GEOVL_QWEN_TIKTOKEN", str(tmp_path / "nope.tiktoken"))
    with pytest.raises(qwen_vocab.QwenVocabNotFound, match="GEOVL_QWEN_TIKTOKEN"):
        qwen_vocab.find_qwen_tiktoken()
    monkeypatch.delenv("GEOVL_QWEN_TIKTOKEN")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "dashscope" else real_find_spec(name, *a)
    )
    with pytest.raises(qwen_vocab.QwenVocabNotFound, match=r"pip install --no-deps dashscope==2\.0\.2"):
        qwen_vocab.find_qwen_tiktoken()
    # the CLI reports it without a traceback and writes nothing
    from geovl.cli import main

    assert main(["model", "tiny", "--family", "qwen2-vl", "--vocab", "qwen", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "dashscope==2.0.2" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()


def test_env_var_points_at_a_tiktoken_file(monkeypatch, tmp_path):
    from geovl.models import qwen_vocab

    p = tmp_path / "v.tiktoken"
    p.write_bytes(b"".join(base64.b64encode(bytes([b])) + b" %d\n" % b for b in range(256)))
    monkeypatch.setenv("GEOVL_QWEN_TIKTOKEN", str(p))
    assert qwen_vocab.find_qwen_tiktoken() == p
    assert qwen_vocab.load_ranks(p) == {bytes([b]): b for b in range(256)}
    with pytest.raises(ValueError, match="expected ranks"):  # not the Qwen table
        qwen_vocab.build_qwen_tokenizer(p)
    bad = tmp_path / "bad.tiktoken"
    bad.write_bytes(b"not base64!! x\n")
    with pytest.raises(ValueError, match="line 1"):
        qwen_vocab.load_ranks(bad)
