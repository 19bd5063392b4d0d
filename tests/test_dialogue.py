"""Multi-turn generation (`geovl eval --dialogue`) and judging (`geovl judge`) end to end.

A small MMDU-style benchmark (LLaVA JSON with <image> tags in several turns) is converted with
`geovl data convert --from llava`, answered turn by turn by a tiny Qwen2-VL (the model's own
answers go into the history; batched per turn index; resumable), then judged twice: by a tiny model
(junk → every turn recorded as unparseable) and through an OpenAI-compatible stub server that
returns canned judge texts from tests/data/judge_outputs (parsing of real calls, failed calls,
--resume, --judgments re-parsing, a custom --template)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geovl.cli import main
from geovl.data.io import DatasetWriter, read_samples
from geovl.data.schema import SampleError, assistant_turn, user_turn
from geovl.evaluate.dialogue import run_dialogues, split_dialogue
from geovl.evaluate.judge_parse import parse_judgment
from geovl.inference import GenerationParams

CORPUS = Path(__file__).parent / "data" / "judge_outputs"
EXPECTED = json.loads((CORPUS / "expected.json").read_text(encoding="utf-8"))


def H(v):
    return {"from": "human", "value": v}


def G(v):
    return {"from": "gpt", "value": v}


DIALOGUES = [
    {"id": "d1", "image": ["a.png", "b.png"], "conversations": [
        H("<image>\n<image>\nCompare the two scenes."), G("Scene A has water, scene B has buildings."),
        H("Which has more buildings?"), G("Scene B."), H("Summarise the changes."), G("Water in A, buildings in B.")]},
    {"id": "d2", "image": ["c.png", "a.png"], "conversations": [
        {"from": "system", "value": "你是遥感影像分析专家。"},
        H("<image>\n描述这张图。"), G("一片农田。"), H("再看这张：<image>\n有什么变化？"), G("出现了水体。")]},
    {"id": "d3", "image": ["b.png"], "conversations": [H("<image>\nIs there water?"), G("no")]},
    {"id": "d4", "conversations": [H("什么是遥感？"), G("遥感是非接触的观测技术。"), H("举一个例子。"), G("卫星影像。")]},
]  # fmt: skip
# (questions as the converter leaves them, references, images per turn) per dialogue
TURNS = {
    "d1": [("Compare the two scenes.", "Scene A has water, scene B has buildings.", 2), ("Which has more buildings?", "Scene B.", 0),
           ("Summarise the changes.", "Water in A, buildings in B.", 0)],
    "d2": [("描述这张图。", "一片农田。", 1), ("再看这张：有什么变化？", "出现了水体。", 1)],
    "d3": [("Is there water?", "no", 1)],
    "d4": [("什么是遥感？", "遥感是非接触的观测技术。", 0), ("举一个例子。", "卫星影像。", 0)],
}  # fmt: skip
N_TURNS = sum(len(t) for t in TURNS.values())


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmdu")
    for i, name in enumerate(("a.png", "b.png", "c.png")):
        arr = np.random.default_rng(i).integers(0, 256, (56, 56, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / name)
    (root / "bench.json").write_text(json.dumps(DIALOGUES, ensure_ascii=False), encoding="utf-8")
    out = root / "bench.parquet"
    assert (
        main(
            [
                "data",
                "convert",
                "--from",
                "llava",
                "--input",
                str(root / "bench.json"),
                "--output",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return tiny_model_dir("qwen2-vl")


@pytest.fixture(scope="module")
def engine(tiny):
    from geovl.inference import LocalEngine

    eng = LocalEngine(str(tiny), device="cpu", batch_size=8)
    yield eng
    eng.close()


class Recorder:
    """The engine interface around a real engine, recording every generate call."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []
        self.name, self.stats, self.batch_size = engine.name, engine.stats, engine.batch_size

    def generate(self, requests, params=None):
        outs = self.engine.generate(requests, params)
        self.calls.append((list(requests), list(outs)))
        return outs


def _texts(msgs, role):
    return ["".join(p.get("text", "") for p in m["content"] if p["type"] == "text") for m in msgs if m["role"] == role]


def test_split_dialogue_turns(bench):
    s = next(x for x in read_samples(bench) if x["id"] == "d2")
    d = split_dialogue(s)
    assert [m["role"] for m in d.system] == ["system"]
    assert [(t.question, t.reference, t.n_images) for t in d.turns] == TURNS["d2"]
    # consecutive user messages form one turn; a trailing user message is a turn without reference
    s2 = dict(s, messages=[user_turn("a"), user_turn("b"), assistant_turn("x"), user_turn("c")], images=[])
    d2 = split_dialogue(s2)
    assert [(t.question, t.reference) for t in d2.turns] == [("a\nb", "x"), ("c", None)]
    with pytest.raises(SampleError) as e:
        split_dialogue(dict(s, messages=[assistant_turn("x"), user_turn("a"), assistant_turn("y")], images=[]))
    assert e.value.reason == "bad_roles"


def test_history_holds_the_models_own_answers(bench, engine, tmp_path):
    rec = Recorder(engine)
    out = tmp_path / "answers.jsonl"
    c = run_dialogues(rec, bench, out, GenerationParams(max_new_tokens=6), progress=False)
    assert (c["read"], c["predicted"], c["turns"], c["rejected"], c["skipped"]) == (4, 4, N_TURNS, 0, 0)
    assert not out.with_name("answers.rejects.jsonl").exists()
    # one generate call per turn index, batched across the dialogues that have that turn
    assert [len(reqs) for reqs, _ in rec.calls] == [4, 3, 1]
    records = {r["id"]: r for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    assert list(records) == ["d1", "d2", "d3", "d4"]
    samples = {s["id"]: s for s in read_samples(bench)}
    for did, turns in TURNS.items():
        r = records[did]
        assert [(t["question"], t["reference"], t["n_images"]) for t in r["turns"]] == turns
        assert r["source"] == f"bench.json#{did}" and r["meta"]["n_turns"] == len(turns)
        preds = [t["prediction"] for t in r["turns"]]
        for k in range(len(turns)):
            reqs, outs = rec.calls[k]
            (i,) = [i for i, q in enumerate(reqs) if _texts(q.messages, "user")[-1].endswith(turns[k][0])]
            req = reqs[i]
            assert outs[i] == preds[k]  # what the model said is what was recorded
            assert _texts(req.messages, "assistant") == preds[:k]  # its own answers, not the references
            if k:
                assert preds[0] != turns[0][1]
            n_img = sum(t[2] for t in turns[: k + 1])
            assert req.images == samples[did]["images"][:n_img]  # images in place, turn by turn
            assert (req.messages[0]["role"] == "system") == (did == "d2")


def test_cli_eval_dialogue_and_resume(bench, tiny, tmp_path, capsys):
    out = tmp_path / "ans.jsonl"
    args = [
        "eval",
        "--dialogue",
        "--model",
        str(tiny),
        "--device",
        "cpu",
        "--data",
        str(bench),
        "--out",
        str(out),
        "--max-new-tokens",
        "6",
        "--no-progress",
    ]
    assert main(args) == 0
    assert "answered 4 of 4 dialogues (8 turns)" in capsys.readouterr().out
    full = out.read_text(encoding="utf-8").splitlines()
    out.write_text(full[0] + "\n" + full[1][: len(full[1]) // 2], encoding="utf-8")  # crash mid-write
    assert main(args + ["--resume"]) == 0
    printed = capsys.readouterr().out
    assert "answered 3 of 4 dialogues (5 turns), skipped 1" in printed
    again = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["id"] for x in again] == ["d1", "d2", "d3", "d4"]
    assert [json.loads(x)["turns"] for x in again] == [json.loads(x)["turns"] for x in full]  # greedy: same answers
    assert main(args + ["--forced-choice"]) == 2


def test_rejects_conserve(bench, engine, tmp_path):
    path = tmp_path / "mixed.jsonl"
    good = list(read_samples(bench))
    bad_img = dict(good[2], id="bad-image", images=[b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
    bad_roles = dict(
        good[3], id="bad-roles", messages=[assistant_turn("hi"), user_turn("q"), assistant_turn("a")], images=[]
    )
    with DatasetWriter(path) as w:
        for s in [good[0], bad_img, bad_roles, good[3]]:
            w.read_one()
            w.write(s)
    out = tmp_path / "mixed_answers.jsonl"
    c = run_dialogues(engine, path, out, GenerationParams(max_new_tokens=4), progress=False)
    assert (c["read"], c["predicted"], c["rejected"]) == (4, 2, 2)
    rej = [json.loads(x) for x in out.with_name("mixed_answers.rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted((r["id"], r["reason"]) for r in rej) == [
        ("bad-image", "undecodable_image"),
        ("bad-roles", "bad_roles"),
    ]
    assert [json.loads(x)["id"] for x in out.read_text(encoding="utf-8").splitlines()] == ["d1", "d4"]


@pytest.fixture(scope="module")
def answers(bench, engine, tmp_path_factory):
    out = tmp_path_factory.mktemp("answers") / "answers.jsonl"
    run_dialogues(engine, bench, out, GenerationParams(max_new_tokens=6), progress=False)
    return out


def test_tiny_model_as_judge_is_unparseable_and_counted(answers, tiny, tmp_path, capsys):
    jdir = tmp_path / "tiny-judge"
    rc = main(["judge", "--answers", str(answers), "--model", str(tiny), "--device", "cpu", "--out", str(jdir), "--lang", "en",
               "--max-new-tokens", "12", "--no-progress"])  # fmt: skip
    assert rc == 0
    recs = [json.loads(x) for x in (jdir / "judgments.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["id"], r["turn"]) for r in recs] == [(d, k) for d, t in TURNS.items() for k in range(1, len(t) + 1)]
    for r in recs:
        assert isinstance(r["raw"], str) and r["judge"] == engine_name(tiny)
        assert r["status"] == "unparseable" and r["scores"] == {}
        assert {k: r[k] for k in ("scores", "status", "missing")} == {
            k: parse_judgment(r["raw"])[k] for k in ("scores", "status", "missing")
        }
    s = json.loads((jdir / "stats.json").read_text(encoding="utf-8"))
    assert s["status"] == {"ok": 0, "partial": 0, "unparseable": N_TURNS, "error": 0}
    assert s["n_turns"] == N_TURNS and s["n_scored"] == 0 and s["overall"] is None
    assert all(d["n_valid"] == 0 and d["mean"] is None for d in s["dimensions"].values())
    assert f"{N_TURNS} unparseable" in capsys.readouterr().out


def engine_name(folder) -> str:
    return Path(folder).resolve().name


# -- an OpenAI-compatible stub: dialogue answers and canned judge texts --------------------------------
CANNED = {  # question → corpus file the "judge" answers with
    "Compare the two scenes.": "01_mmdu_en_full.txt",
    "Which has more buildings?": "05_markdown_bold_dash.txt",
    "Summarise the changes.": "11_out_of_range.txt",
    "描述这张图。": "02_mmdu_zh_full.txt",
    "再看这张：有什么变化？": "16_chinese_numerals.txt",
    "Is there water?": "21_junk_tiny_model.txt",
    "什么是遥感？": "08_table_rows_zh.txt",
    "举一个例子。": "24_rubric_echo_zh.txt",
}
FAIL_TIMES = {"Which has more buildings?": 2}  # the first two judge calls for this turn fail (HTTP 500)


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if p["type"] == "text")


class Stub(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _json(self, obj, code=200):
        data = json.dumps(obj, ensure_ascii=False).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._json({"object": "list", "data": [{"id": "stub-judge", "object": "model", "created": 0, "owned_by": "t"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        msgs = body["messages"]
        last = _text(msgs[-1]["content"])
        st = self.server.state
        with st["lock"]:
            st["bodies"].append(body)
            question = next((q for q in CANNED if q in last), None)
            judging = question is not None and ("[Question]" in last or "[问题]" in last or last.startswith("JUDGE"))
            if judging:
                st["judge_calls"].append(question)
                st["prompts"].append(last)
                fail = st["failures"].get(question, 0) < FAIL_TIMES.get(question, 0)
                if fail:
                    st["failures"][question] = st["failures"].get(question, 0) + 1
        if judging and fail:
            return self._json({"error": {"message": "judge overloaded"}}, 500)
        if judging:
            answer = (CORPUS / CANNED[question]).read_text(encoding="utf-8")
        else:  # a dialogue turn: answer with the turn number and the question
            answer = f"answer {sum(m['role'] == 'assistant' for m in msgs) + 1}: {last.strip()}"
        self._json({"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]})  # fmt: skip


@pytest.fixture(scope="module")
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    server.state = {"lock": threading.Lock(), "bodies": [], "judge_calls": [], "prompts": [], "failures": {}}
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.shutdown()
    server.server_close()


def test_remote_dialogue_and_canned_judge(bench, stub, tmp_path, capsys):
    url = f"http://127.0.0.1:{stub.server_address[1]}/v1"
    ans = tmp_path / "remote_answers.jsonl"
    assert (
        main(
            [
                "eval",
                "--dialogue",
                "--api",
                url,
                "--data",
                str(bench),
                "--out",
                str(ans),
                "--max-new-tokens",
                "64",
                "--no-progress",
            ]
        )
        == 0
    )
    recs = {r["id"]: r for r in map(json.loads, ans.read_text(encoding="utf-8").splitlines())}
    assert recs["d1"]["turns"][2]["prediction"] == "answer 3: Summarise the changes."
    # the request for d1's third turn carried the stub's own earlier answers and both images
    body = next(b for b in stub.state["bodies"] if _text(b["messages"][-1]["content"]) == "Summarise the changes.")
    assert [m["content"] for m in body["messages"] if m["role"] == "assistant"] == [
        "answer 1: Compare the two scenes.",
        "answer 2: Which has more buildings?",
    ]
    assert (
        sum(
            1
            for m in body["messages"]
            if isinstance(m["content"], list)
            for p in m["content"]
            if p["type"] == "image_url"
        )
        == 2
    )

    jdir = tmp_path / "judged"
    # --api-retries 0: the stub's HTTP 500s must reach the judge (with the client's default retries the second attempt
    # of a call would already succeed; tests/test_remote_retries.py covers those retries)
    judge = [
        "judge",
        "--answers",
        str(ans),
        "--judge",
        "--api",
        url,
        "--out",
        str(jdir),
        "--no-progress",
        "--lang",
        "en",
        "--api-retries",
        "0",
    ]
    assert main(judge) == 0
    assert "1 failed calls" in capsys.readouterr().out
    recs = {
        (r["id"], r["turn"]): r
        for r in map(json.loads, (jdir / "judgments.jsonl").read_text(encoding="utf-8").splitlines())
    }
    assert len(recs) == N_TURNS
    failed = recs[("d1", 2)]
    assert failed["status"] == "error" and "HTTP 500" in failed["error"] and failed["raw"] is None
    for (did, k), r in recs.items():
        q = TURNS[did][k - 1][0]
        if (did, k) == ("d1", 2):
            continue
        exp = EXPECTED[CANNED[q]]
        assert r["raw"] == (CORPUS / CANNED[q]).read_text(encoding="utf-8")
        assert r["scores"] == exp["scores"] and r["status"] == exp["status"], (did, k)
        assert [[x["dim"], x["reason"]] for x in r["rejected"]] == exp["rejected"]
    prompt = next(p for p in stub.state["prompts"] if "Summarise the changes." in p)
    assert "[The Start of Reference Answer]\nWater in A, buildings in B.\n" in prompt
    assert "[The Start of Assistant's Answer]\nanswer 3: Summarise the changes.\n" in prompt
    assert "(turn 3, 2 image(s) shown so far)" in prompt
    s = json.loads((jdir / "stats.json").read_text(encoding="utf-8"))
    assert s["status"] == {"ok": 4, "partial": 2, "unparseable": 1, "error": 1}
    # creativity: valid in 01 (4), 02 (3), 16 (8), 08 (4) → mean 4.75
    assert s["dimensions"]["creativity"] == {"mean": pytest.approx(47.5), "n_valid": 4}

    # --resume: only the failed turn is judged again (now it succeeds)
    before = len(stub.state["judge_calls"])
    assert main(judge + ["--resume"]) == 0
    assert stub.state["judge_calls"][before:] == ["Which has more buildings?"]
    recs2 = [json.loads(x) for x in (jdir / "judgments.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(recs2) == N_TURNS and sum(r["status"] == "error" for r in recs2) == 0
    fixed = next(r for r in recs2 if (r["id"], r["turn"]) == ("d1", 2))
    assert fixed["scores"] == EXPECTED["05_markdown_bold_dash.txt"]["scores"]
    s = json.loads((jdir / "stats.json").read_text(encoding="utf-8"))
    assert s["status"] == {"ok": 5, "partial": 2, "unparseable": 1, "error": 0}

    # --judgments: re-parse the raw texts without any judge (stored parses deliberately wiped)
    wiped = tmp_path / "wiped.jsonl"
    wiped.write_text(
        "".join(json.dumps({**r, "scores": {}, "status": "unparseable"}, ensure_ascii=False) + "\n" for r in recs2),
        encoding="utf-8",
    )
    calls = len(stub.state["judge_calls"])
    assert main(["judge", "--judgments", str(wiped), "--out", str(tmp_path / "reparsed")]) == 0
    assert len(stub.state["judge_calls"]) == calls
    again = [
        json.loads(x) for x in (tmp_path / "reparsed" / "judgments.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert [(r["scores"], r["status"]) for r in again] == [(r["scores"], r["status"]) for r in recs2]
    assert json.loads((tmp_path / "reparsed" / "stats.json").read_text(encoding="utf-8")) == s

    # a template with the same run folder but another template is refused on --resume
    tpl = tmp_path / "tpl.txt"
    tpl.write_text("JUDGE {question} || {reference} || {answer} {turn}/{n_images} {unknown}", encoding="utf-8")
    assert main(judge + ["--resume", "--template", str(tpl)]) == 2
    assert "another template" in capsys.readouterr().err
    # a custom template: placeholders replaced in one pass, other braces left alone
    assert (
        main(
            [
                "judge",
                "--answers",
                str(ans),
                "--api",
                url,
                "--out",
                str(tmp_path / "custom"),
                "--template",
                str(tpl),
                "--limit",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    assert sorted(stub.state["prompts"][-3:]) == [  # the 3 turns of the first dialogue (concurrent calls)
        "JUDGE Compare the two scenes. || Scene A has water, scene B has buildings. || answer 1: Compare the two scenes. 1/2 {unknown}",
        "JUDGE Summarise the changes. || Water in A, buildings in B. || answer 3: Summarise the changes. 3/2 {unknown}",
        "JUDGE Which has more buildings? || Scene B. || answer 2: Which has more buildings? 2/2 {unknown}",
    ]
    bad = tmp_path / "bad_tpl.txt"
    bad.write_text("no placeholders here", encoding="utf-8")
    assert (
        main(["judge", "--answers", str(ans), "--api", url, "--out", str(tmp_path / "x"), "--template", str(bad)]) == 2
    )
    assert "lacks the placeholder(s) {question}, {answer}" in capsys.readouterr().err


def test_judge_cli_errors(answers, tmp_path, capsys):
    assert main(["judge", "--answers", str(answers), "--out", str(tmp_path / "o")]) == 2
    assert "give the judge" in capsys.readouterr().err
    assert main(["judge", "--model", "x", "--out", str(tmp_path / "o")]) == 2
    assert (
        main(["judge", "--answers", str(tmp_path / "missing.jsonl"), "--model", "x", "--out", str(tmp_path / "o")]) == 2
    )
    assert "no such answers file" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "turns": "nope"}\n', encoding="utf-8")
    assert (
        main(
            [
                "judge",
                "--answers",
                str(bad),
                "--api",
                "http://127.0.0.1:9/v1",
                "--model",
                "m",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "bad.jsonl:1: 'turns' must be a list" in capsys.readouterr().err
