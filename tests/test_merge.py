"""``geovl merge``: base + adapter → one folder stock transformers (and vLLM) load, with every adapter
tensor accounted for; same logits as base+adapter; clear errors for foreign or tampered adapters."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import TINY_FAMILIES
from sft_util import qa_samples, run_cli, train, write_dataset

# what each family's run trains: together they cover LoRA, DoRA, vision LoRA, merger + deepstack mergers
RUNS = {
    "qwen2-vl": ["use_dora=true"],
    "qwen2.5-vl": ["tune_vision=lora"],
    "qwen3-vl": ["tune_vision=lora", "tune_merger=full"],
}


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """family → (base folder, run folder) of a 2-step LoRA run (lr 1e-2 so the adapter visibly matters)."""
    root = tmp_path_factory.mktemp("merge")
    data = write_dataset(root / "d.parquet", qa_samples(6))
    cap = _NoCapsys()
    out = {}
    for fam, extra in RUNS.items():
        run = root / fam
        rc, err = train(cap, tiny_model_dir(fam), data, run, "max_steps=2", "lr=1e-2", "warmup_ratio=0", *extra)
        assert rc == 0, err[-2000:]
        out[fam] = (tiny_model_dir(fam), run)
    return out


class _NoCapsys:
    """Stand-in for capsys in a module fixture: the CLI output is simply not captured."""

    def readouterr(self):
        class R:
            err = ""

        return R()


def _inputs(folder):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(folder)
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (112, 140, 3), dtype=np.uint8))
    msgs = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "Is there water?"}]}]
    return proc.apply_chat_template(
        msgs, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )


def _logits(model, inputs):
    with torch.no_grad():
        return model.eval()(**inputs).logits


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_merged_model_equals_base_plus_adapter(runs, tmp_path, capsys, family):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    base, run = runs[family]
    out = tmp_path / "merged"
    rc, err = run_cli(capsys, "merge", "--base", base, "--adapter", run / "final", "--out", out)
    assert rc == 0, err[-2000:]
    for f in (
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "processor_config.json",
        "tokenizer.json",
        "chat_template.jinja",
        "geovl_preprocess.json",
        "geovl_merge.json",
    ):
        assert (out / f).is_file(), f
    info = json.loads((out / "geovl_merge.json").read_text())
    n_file = len(load_file(str(run / "final" / "adapter_model.safetensors")))
    assert info["kind"] == "lora" and info["adapter_tensors"] == n_file and info["modules_to_save_tensors"] > 0
    assert (out / "geovl_preprocess.json").read_text() == (run / "final" / "geovl_preprocess.json").read_text()

    # what vLLM / stock transformers do: the Auto classes, no peft, no geovl
    merged = AutoModelForImageTextToText.from_pretrained(out)
    proc = AutoProcessor.from_pretrained(out)
    assert proc.chat_template and type(proc).__name__.endswith("Processor")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    inputs = _inputs(out)
    ref = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), str(run / "final"))
    got, want = _logits(merged, inputs), _logits(ref, inputs)
    assert (got - want).abs().max() <= 1e-5, (got - want).abs().max()
    plain = _logits(AutoModelForImageTextToText.from_pretrained(base), inputs)
    assert (got - plain).abs().max() > 1e-3  # the adapter really changed the model


def test_adapter_for_another_base_is_refused(runs, tmp_path, capsys):
    base3, _ = runs["qwen3-vl"]
    _, run2 = runs["qwen2-vl"]
    rc, err = run_cli(capsys, "merge", "--base", base3, "--adapter", run2 / "final", "--out", tmp_path / "x")
    assert rc == 2 and "trained for qwen2_vl" in err and "qwen3_vl" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()

    # without geovl's family record the tensor check catches it: the Qwen2-VL merger matches nothing in Qwen3-VL
    bare = tmp_path / "bare"
    shutil.copytree(run2 / "final", bare)
    (bare / "geovl_preprocess.json").unlink()
    cfg = json.loads((bare / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "somewhere/else"
    (bare / "adapter_config.json").write_text(json.dumps(cfg))
    rc, err = run_cli(capsys, "merge", "--base", base3, "--adapter", bare, "--out", tmp_path / "y")
    assert rc == 2 and "geovl: error:" in err and "Traceback" not in err
    assert "does not fit this base" in err or "match nothing in the base model" in err
    assert not (tmp_path / "y").exists()


def test_tampered_adapter_files_are_refused(runs, tmp_path, capsys):
    base, run = runs["qwen2.5-vl"]
    tensors = load_file(str(run / "final" / "adapter_model.safetensors"))

    extra = tmp_path / "extra"
    shutil.copytree(run / "final", extra)
    bogus = "base_model.model.model.language_model.layers.0.mlp.fancy_proj.lora_A.weight"
    save_file({**tensors, bogus: torch.zeros(4, 4)}, str(extra / "adapter_model.safetensors"))
    rc, err = run_cli(capsys, "merge", "--base", base, "--adapter", extra, "--out", tmp_path / "o1")
    assert rc == 2 and bogus in err and "match nothing" in err and not (tmp_path / "o1").exists()

    missing = tmp_path / "missing"
    shutil.copytree(run / "final", missing)
    gone = sorted(k for k in tensors if "lora_B" in k)[0]
    save_file({k: v for k, v in tensors.items() if k != gone}, str(missing / "adapter_model.safetensors"))
    rc, err = run_cli(capsys, "merge", "--base", base, "--adapter", missing, "--out", tmp_path / "o2")
    assert rc == 2 and gone in err and "not in the file" in err

    reshaped = tmp_path / "reshaped"
    shutil.copytree(run / "final", reshaped)
    k0 = sorted(k for k in tensors if "lora_A" in k)[0]
    save_file({**tensors, k0: torch.zeros(3, 3)}, str(reshaped / "adapter_model.safetensors"))
    rc, err = run_cli(capsys, "merge", "--base", base, "--adapter", reshaped, "--out", tmp_path / "o3")
    assert rc == 2 and "does not fit this base" in err and "Traceback" not in err

    rc, err = run_cli(capsys, "merge", "--base", base, "--adapter", tmp_path / "nothing", "--out", tmp_path / "o4")
    assert rc == 2 and "adapter folder not found" in err


def test_full_fine_tune_is_validated_and_copied(tiny_model_dir, tmp_path, capsys):
    from transformers import AutoModelForImageTextToText

    base = tiny_model_dir("qwen2.5-vl")
    data = write_dataset(tmp_path / "d.parquet", qa_samples(4))
    run = tmp_path / "full"
    rc, err = train(capsys, base, data, run, "max_steps=1", "tune_llm=full", "tune_merger=full", "lr=1e-3")
    assert rc == 0, err[-2000:]
    out = tmp_path / "merged"
    rc, err = run_cli(capsys, "merge", "--base", base, "--adapter", run / "final", "--out", out)
    assert rc == 0, err[-2000:]
    assert json.loads((out / "geovl_merge.json").read_text())["kind"] == "full"
    inputs = _inputs(out)
    a = _logits(AutoModelForImageTextToText.from_pretrained(out), inputs)
    b = _logits(AutoModelForImageTextToText.from_pretrained(run / "final"), inputs)
    assert torch.equal(a, b)
    # full weights of another family: refused
    rc, err = run_cli(
        capsys, "merge", "--base", tiny_model_dir("qwen2-vl"), "--adapter", run / "final", "--out", tmp_path / "bad"
    )
    assert rc == 2 and "qwen2_5_vl" in err and "qwen2_vl" in err
    # an existing non-empty output folder is not overwritten without --force
    rc, err = run_cli(capsys, "merge", "--base", base, "--adapter", run / "final", "--out", out)
    assert rc == 2 and "--force" in err
    rc, err = run_cli(capsys, "merge", "--base", base, "--adapter", run / "final", "--out", out, "--force")
    assert rc == 0


@pytest.mark.qwen_vocab
def test_tied_embeddings_stay_tied_or_are_untied_when_trained_apart(tiny_model_dir, tmp_path, capsys):
    """Real Qwen2.5-VL-3B ties embed_tokens and lm_head. geovl trains them as one matrix (peft
    ensure_weight_tying): the merge stays tied. An adapter that trained them apart (another tool) is merged
    with an untied config, or a loader honouring tie_word_embeddings (vLLM) would drop the trained lm_head."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = tiny_model_dir("qwen2.5-vl", vocab="qwen")
    data = write_dataset(tmp_path / "d.parquet", qa_samples(4))
    run = tmp_path / "run"
    rc, err = train(capsys, base, data, run, "max_steps=1", "lr=1e-2", "warmup_ratio=0", "tune_embeddings=true")
    assert rc == 0, err[-2000:]
    assert json.loads((run / "final" / "adapter_config.json").read_text())["ensure_weight_tying"] is True
    tensors = load_file(str(run / "final" / "adapter_model.safetensors"))
    emb_k = next(k for k in tensors if k.endswith("embed_tokens.weight"))
    head_k = next(k for k in tensors if k.endswith("lm_head.weight"))
    assert torch.equal(tensors[emb_k], tensors[head_k])
    inputs = None
    for case in ("tied", "untied"):
        adapter_dir = run / "final"
        if case == "untied":  # an adapter made by another tool: embed_tokens and lm_head trained as two matrices
            from peft import LoraConfig, get_peft_model

            fam_mts = ["model.language_model.embed_tokens", "lm_head"]
            pm = get_peft_model(
                AutoModelForImageTextToText.from_pretrained(base),
                LoraConfig(
                    r=4,
                    target_modules=r"model\.language_model\.layers\.\d+\.self_attn\.q_proj",
                    modules_to_save=fam_mts,
                    ensure_weight_tying=False,
                ),
            )
            with torch.no_grad():
                for n, p in pm.named_parameters():
                    if "modules_to_save" in n and "lm_head" in n:
                        p.add_(0.01)
                    elif "lora_B" in n:
                        p.add_(0.01)
            adapter_dir = tmp_path / "apart"
            pm.save_pretrained(adapter_dir)
            assert sum("lm_head" in k for k in load_file(str(adapter_dir / "adapter_model.safetensors"))) == 1
        out = tmp_path / f"merged-{case}"
        rc, err = run_cli(capsys, "merge", "--base", base, "--adapter", adapter_dir, "--out", out)
        assert rc == 0, err[-2000:]
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["tie_word_embeddings"] is cfg["text_config"]["tie_word_embeddings"] is (case == "tied")
        assert json.loads((out / "geovl_merge.json").read_text())["embeddings"] == case
        merged = AutoModelForImageTextToText.from_pretrained(out)
        assert (merged.lm_head.weight.data_ptr() == merged.get_input_embeddings().weight.data_ptr()) is (case == "tied")
        ref = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), str(adapter_dir))
        inputs = inputs or _inputs(out)
        assert (_logits(merged, inputs) - _logits(ref, inputs)).abs().max() <= 1e-5, case
