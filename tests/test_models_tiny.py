"""Tiny models of the real architectures: build → stock load → process → forward → generate."""

from __future__ import annotations

import json

import numpy as np
import pytest

TINY_FAMILIES = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl")

EXPECTED_CLASSES = {
    "qwen2-vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", "Qwen2VLVideoProcessor"),
    "qwen2.5-vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor"),
    "qwen3-vl": ("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
}


def _image(h: int, w: int, seed: int = 0):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    """family → (model, processor) loaded with the stock Auto classes, once per module."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    cache = {}

    def get(family):
        if family not in cache:
            d = tiny_model_dir(family)
            cache[family] = (AutoModelForImageTextToText.from_pretrained(d).eval(), AutoProcessor.from_pretrained(d))
        return cache[family]

    return get


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_folder_loads_with_stock_classes(family, tiny_model_dir, loaded):
    from transformers import Qwen2VLImageProcessor

    from geovl.models.registry import get_family
    from geovl.models.tokenizer import CHAT_TEMPLATE_PATH, SPECIAL_TOKENS

    d = tiny_model_dir(family)
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "processor_config.json"):  # fmt: skip
        assert (d / name).is_file(), name
    assert (d / "chat_template.jinja").read_text(encoding="utf-8") == CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")
    model, proc = loaded(family)
    model_cls, proc_cls, video_cls = EXPECTED_CLASSES[family]
    assert type(model).__name__ == model_cls
    assert type(proc).__name__ == proc_cls  # the real processor, not just the tokenizer
    assert isinstance(proc.image_processor, Qwen2VLImageProcessor)
    assert type(proc.video_processor).__name__ == video_cls
    assert type(proc.tokenizer).__name__ == "Qwen2Tokenizer"
    from transformers import AutoTokenizer

    alone = AutoTokenizer.from_pretrained(d)  # the tokenizer alone carries the template too
    assert len(alone) == len(proc.tokenizer) and alone.chat_template == proc.tokenizer.chat_template
    fam = get_family(model.config)
    assert fam.cli_name == family
    assert proc.image_processor.patch_size == fam.patch_size and proc.image_processor.merge_size == fam.merge_size
    assert proc.image_processor.size == {"shortest_edge": (2 * fam.factor) ** 2, "longest_edge": (16 * fam.factor) ** 2}
    tok = proc.tokenizer
    n_base = len(tok) - len(SPECIAL_TOKENS)
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(n_base, len(tok)))
    cfg = model.config
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert cfg.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>")
    assert cfg.text_config.vocab_size == len(tok) and cfg.text_config.bos_token_id is None
    assert model.get_input_embeddings().weight.shape == (len(tok), 64)
    assert model.generation_config.eos_token_id == [tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id]
    meta = json.loads((d / "geovl_tiny.json").read_text())
    assert meta["parameters"] == sum(p.numel() for p in model.parameters())
    assert 100_000 < meta["parameters"] < 1_000_000


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_image_question_forward_and_generate(family, loaded):
    import torch

    from geovl.models.registry import get_family

    model, proc = loaded(family)
    fam = get_family(family)
    msgs = [
        {
            "role": "user",
            "content": [{"type": "image", "image": _image(300, 500)}, {"type": "text", "text": "图中是否有水体？"}],
        }
    ]
    inputs = proc.apply_chat_template(
        msgs, tokenize=True, return_dict=True, return_tensors="pt", add_generation_prompt=True
    )
    ids = inputs["input_ids"][0].tolist()
    lo, hi = proc.image_processor.size["shortest_edge"], proc.image_processor.size["longest_edge"]
    assert ids.count(model.config.image_token_id) == fam.image_tokens(300, 500, lo, hi)
    assert inputs["image_grid_thw"][0].tolist() == list(fam.grid_thw(300, 500, lo, hi))
    assert "mm_token_type_ids" in inputs
    text = proc.tokenizer.decode(ids)
    assert text.endswith("图中是否有水体？<|im_end|>\n<|im_start|>assistant\n")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, len(ids), len(proc.tokenizer)) and torch.isfinite(logits).all()
    eos = model.generation_config.eos_token_id
    out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=3, do_sample=False)
    new = out[0, len(ids) :].tolist()
    assert 3 <= len(new) <= 4
    last = logits[0, -1].clone()
    last[eos] = float("-inf")  # min_new_tokens suppresses eos on the first steps
    assert new[0] == int(last.argmax())  # greedy = argmax of the forward pass
    again = model.generate(**inputs, max_new_tokens=4, min_new_tokens=3, do_sample=False)
    assert again[0].tolist() == out[0].tolist()


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_video_input_runs_through_the_stock_video_processor(family, loaded):
    import torch

    model, proc = loaded(family)
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What changed?"}]}]
    text = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    frames = np.random.default_rng(2).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    metadata = {"fps": 2.0, "total_num_frames": 4, "duration": 2.0, "frames_indices": [0, 1, 2, 3]}
    enc = proc(text=[text], videos=[frames], video_metadata=[metadata], do_sample_frames=False, return_tensors="pt")
    t, h, w = enc["video_grid_thw"][0].tolist()
    assert t == 2  # 4 frames, temporal patch 2
    assert enc["input_ids"][0].tolist().count(model.config.video_token_id) == t * h * w // 4
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert out.shape[1] == enc["input_ids"].shape[1] + 2


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_assistant_mask_is_exactly_the_answers(family, loaded):
    _, proc = loaded(family)
    answer1, answer2 = "有，水体位于图像左上角。", "3"
    msgs = [
        {
            "role": "user",
            "content": [{"type": "image", "image": _image(224, 224, 1)}, {"type": "text", "text": "Is there water?"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": answer1}]},
        {"role": "user", "content": "How many buildings are there?"},
        {"role": "assistant", "content": answer2},
    ]
    enc = proc.apply_chat_template(
        msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )
    ids = enc["input_ids"][0].tolist()
    mask = enc["assistant_masks"][0].tolist()
    assert len(mask) == len(ids)
    tok = proc.tokenizer
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == f"{answer1}<|im_end|>{answer2}<|im_end|>"
    # the short answer "3" is one token, followed by <|im_end|>
    spans, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    assert len(spans) == 2 and spans[1] == [tok.convert_tokens_to_ids("3"), tok.convert_tokens_to_ids("<|im_end|>")]


def test_same_seed_same_weights_other_seed_differs(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from geovl.models.tiny import build_tiny

    ref = load_file(tiny_model_dir("qwen2.5-vl") / "model.safetensors")
    same = load_file(build_tiny("qwen2_5_vl", tmp_path / "same", seed=0) / "model.safetensors")
    other = load_file(build_tiny("qwen2.5-vl", tmp_path / "other", seed=1) / "model.safetensors")
    assert ref.keys() == same.keys() == other.keys()
    assert all((ref[k] == same[k]).all() for k in ref)
    weights = [k for k in ref if k.endswith("weight") and ref[k].std() > 0]
    assert weights and all(not (ref[k] == other[k]).all() for k in weights)
    # the global RNG is left alone
    import torch

    torch.manual_seed(123)
    a = torch.rand(3)
    torch.manual_seed(123)
    build_tiny("qwen2-vl", tmp_path / "rng", seed=5)
    assert (torch.rand(3) == a).all()


def test_chat_template_renders_like_qwen2_vl(loaded):
    tok = loaded("qwen2.5-vl")[1].tokenizer
    sys_default = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    v = "<|vision_start|><|image_pad|><|vision_end|>"
    r = tok.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True)
    assert r == sys_default + "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    msgs = [
        {"role": "system", "content": "You are a remote sensing expert."},
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"image": "a.png"},
                {"type": "video"},
                {"image_url": {"url": "x"}},
                {"type": "text", "text": "Compare."},
            ],
        },  # fmt: skip
        {"role": "assistant", "content": "Done."},
    ]
    r = tok.apply_chat_template(msgs, tokenize=False)
    assert r == (
        "<|im_start|>system\nYou are a remote sensing expert.<|im_end|>\n"
        f"<|im_start|>user\n{v}{v}<|vision_start|><|video_pad|><|vision_end|>{v}Compare.<|im_end|>\n"
        "<|im_start|>assistant\nDone.<|im_end|>\n"
    )
    r = tok.apply_chat_template(msgs[1:2], tokenize=False, add_vision_id=True, add_generation_prompt=False)
    assert r == (
        sys_default
        + f"<|im_start|>user\nPicture 1: {v}Picture 2: {v}Video 1: <|vision_start|><|video_pad|><|vision_end|>"
        f"Picture 3: {v}Compare.<|im_end|>\n"
    )


def test_small_tokenizer_chinese_round_trip_and_single_token_answers(loaded):
    from geovl.models.tokenizer import SINGLE_TOKEN_ANSWERS, SPECIAL_TOKENS, small_vocab_and_merges

    tok = loaded("qwen2-vl")[1].tokenizer
    assert 300 <= len(tok) <= 1000 + len(SPECIAL_TOKENS)
    n_base = len(tok) - len(SPECIAL_TOKENS)
    texts = [
        "图中是否有水体？耕地面积是多少平方公里？",
        "两期影像之间新增了12栋建筑，林地减少了3.5公顷（约52.5亩）。",
        "鸟瞰图：黄河三角洲湿地，盐碱地，𠀀𪚥（罕见字）",  # characters never seen in training
        "How many buildings are in the image? 10632 m², 4.5 km², 250 ha 🛰️",
        "混合 text 与 数字 2024-06-01\n第二行\t制表",
    ]
    for s in texts:
        ids = tok.encode(s, add_special_tokens=False)
        assert all(i < n_base for i in ids)  # plain text never becomes a special token
        assert tok.decode(ids) == s
    assert len(tok.encode("耕地", add_special_tokens=False)) == 1  # the corpus taught it common words
    for word in SINGLE_TOKEN_ANSWERS:
        assert len(tok.encode(word, add_special_tokens=False)) == 1, word
    # trained offline, deterministically
    assert small_vocab_and_merges.__wrapped__() == small_vocab_and_merges()


def test_cli_model_tiny_end_to_end(tmp_path, capsys):
    from transformers import AutoConfig

    from geovl.cli import main

    out = tmp_path / "m"
    assert main(["model", "tiny", "--family", "qwen3-vl", "--out", str(out), "--seed", "7", "--layers", "1",
                 "--vision-depth", "3", "--hidden", "32", "--max-pixels", str(256 * 256)]) == 0  # fmt: skip
    assert "Qwen3-VL" in capsys.readouterr().out
    cfg = AutoConfig.from_pretrained(out)
    assert cfg.model_type == "qwen3_vl" and cfg.text_config.num_hidden_layers == 1 and cfg.text_config.hidden_size == 32
    assert cfg.vision_config.depth == 3 and cfg.vision_config.deepstack_visual_indexes == [0, 1]
    assert cfg.text_config.head_dim == 8 and sum(cfg.text_config.rope_parameters["mrope_section"]) == 4
    meta = json.loads((out / "geovl_tiny.json").read_text())
    assert meta["seed"] == 7 and meta["max_pixels"] == 256 * 256 and meta["min_pixels"] == 64 * 64
    before = (out / "model.safetensors").read_bytes()
    # a non-empty folder is refused without --force and left untouched
    assert main(["model", "tiny", "--family", "qwen3-vl", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    assert main(["model", "tiny", "--family", "qwen3_vl", "--out", str(out), "--force"]) == 0
    assert (out / "model.safetensors").read_bytes() != before
    # --force only ever replaces a model folder
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main(["model", "tiny", "--family", "qwen2-vl", "--out", str(other), "--force"]) == 2
    assert "not a model folder" in capsys.readouterr().err and (other / "keep.txt").read_text() == "mine"
    # unknown family: clear message listing what is supported, nothing written
    assert main(["model", "tiny", "--family", "nonsense", "--out", str(tmp_path / "n")]) == 2
    err = capsys.readouterr().err
    assert "nonsense" in err and all(f in err for f in TINY_FAMILIES) and "Traceback" not in err
    assert not (tmp_path / "n").exists()
    # bad sizes are user errors too
    assert main(["model", "tiny", "--family", "qwen2-vl", "--out", str(tmp_path / "b"), "--hidden", "48"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert main(["model", "tiny", "--family", "qwen2-vl", "--out", str(tmp_path / "b"), "--min-pixels", "100"]) == 2
    assert "min_pixels" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left behind
    assert oct(out.stat().st_mode & 0o777) == oct(0o755)


def test_pixel_bounds_are_overridable(tmp_path):
    from transformers import AutoProcessor

    from geovl.models.tiny import TinyModelError, build_tiny

    d = build_tiny("qwen2-vl", tmp_path / "m", min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    proc = AutoProcessor.from_pretrained(d)
    assert proc.image_processor.size == {"shortest_edge": 3136, "longest_edge": 12544}
    enc = proc(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[_image(448, 448)], return_tensors="pt")
    assert enc["input_ids"][0].tolist().count(proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")) == 16
    with pytest.raises(TinyModelError, match="max_pixels"):
        build_tiny("qwen2-vl", tmp_path / "bad", min_pixels=10000, max_pixels=5000)
    with pytest.raises(ValueError, match="small"):
        build_tiny("qwen2-vl", tmp_path / "bad2", vocab="nope")
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad2").exists()


def test_short_answers_are_forced_to_single_tokens_even_in_a_starved_vocab():
    """With only 300 trained tokens BPE never learns the answers; the appended merges still make each
    one a single token without changing how any text round-trips."""
    import json

    from geovl.models.tokenizer import (
        SINGLE_TOKEN_ANSWERS,
        SPECIAL_TOKENS,
        build_small_tokenizer,
        small_vocab_and_merges,
    )

    tok = build_small_tokenizer(300)
    trained = len(json.loads(small_vocab_and_merges(300)[0]))
    assert trained > 300  # merges were appended for the answers BPE did not learn
    assert len(tok) == trained + len(SPECIAL_TOKENS)
    for word in SINGLE_TOKEN_ANSWERS:
        assert len(tok.encode(word, add_special_tokens=False)) == 1, word
    s = "没有没有农村城镇 rural urbanization 有没有 yesterday nobody 是否"
    assert tok.decode(tok.encode(s, add_special_tokens=False)) == s


def test_loading_helpers(tiny_model_dir, tmp_path):
    import shutil

    from geovl.models.loading import ModelFolderError, load_model_folder, load_processor, read_family

    d = tiny_model_dir("qwen3-vl")
    model, proc, fam = load_model_folder(d)
    assert fam.key == "qwen3_vl" and type(model).__name__ == "Qwen3VLForConditionalGeneration" and not model.training
    assert type(proc).__name__ == "Qwen3VLProcessor"
    with pytest.raises(ModelFolderError, match="not found"):
        read_family(tmp_path / "absent")
    with pytest.raises(ModelFolderError, match="config.json"):
        read_family(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="not valid JSON"):
        read_family(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llava"}')
    with pytest.raises(ModelFolderError, match="qwen2.5-vl"):
        read_family(tmp_path)
    # a folder whose processor config is gone is refused with the folder named
    broken = tmp_path / "broken"
    shutil.copytree(d, broken)
    (broken / "processor_config.json").unlink()
    with pytest.raises(ModelFolderError, match="broken.*processor"):
        load_processor(broken)
    # ... and so is one naming a custom processor class, where AutoProcessor silently gives back
    # only the tokenizer (the torchvision-less workaround's pitfall)
    custom = tmp_path / "custom"
    shutil.copytree(d, custom)
    for name in ("processor_config.json", "tokenizer_config.json"):
        cfg = json.loads((custom / name).read_text())
        cfg["processor_class"] = "ImageOnlyQwen3VLProcessor"
        (custom / name).write_text(json.dumps(cfg))
    with pytest.raises(ModelFolderError, match="loaded only Qwen2Tokenizer"):
        load_processor(custom)
