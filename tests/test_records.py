"""The prediction record schema: one check where eval writes a record and where score/compare/judge read one."""

import json

import pytest

from geovl.errors import GeoVLError
from geovl.evaluate import score
from geovl.evaluate.judge import JudgeError, read_answers
from geovl.evaluate.records import PredictionsFileError, check_record, prediction_record, read_predictions

GOOD = {
    "id": 7,
    "qtype": "count",
    "question": "How many?",
    "reference": 3,
    "prediction": None,
    "source": "s",
    "meta": {"lang": "en"},
    "extra": [1],
}


def test_check_normalises_a_good_record():
    rec = check_record(dict(GOOD), "f.jsonl:1")
    assert rec["id"] == "7" and rec["reference"] == "3" and rec["prediction"] == "" and rec["extra"] == [1]
    assert check_record({**GOOD, "meta": None, "prediction": {"a": "中"}}, "x")["meta"] == {}
    assert check_record({**GOOD, "prediction": {"a": "中"}}, "x")["prediction"] == '{"a": "中"}'


@pytest.mark.parametrize(
    "change,message",
    [
        ({"qtype": ""}, "f.jsonl:3: 'qtype' must be a non-empty string"),
        ({"id": ""}, "f.jsonl:3: 'id' must be a non-empty string"),
        ({"id": [1]}, "f.jsonl:3: 'id' must be a non-empty string"),
        ({"meta": [1]}, "f.jsonl:3: 'meta' must be an object"),
        ({"prediction": ...}, "f.jsonl:3: missing required field(s) prediction"),
    ],
)
def test_broken_rules_are_clear_errors(change, message):
    rec = {**GOOD, **change}
    rec = {k: v for k, v in rec.items() if v is not ...}
    with pytest.raises(PredictionsFileError) as e:
        check_record(rec, "f.jsonl:3")
    assert str(e.value) == message and isinstance(e.value, GeoVLError)
    with pytest.raises(PredictionsFileError, match="expected a JSON object, got list"):
        check_record([1], "f.jsonl:3")


def test_the_writer_checks_the_same_schema():
    rec = prediction_record("a1", "yes_no", "Is it?", "yes", "no", source="d", lang="en", meta={"k": 1})
    assert rec == {
        "id": "a1",
        "qtype": "yes_no",
        "question": "Is it?",
        "reference": "yes",
        "prediction": "no",
        "source": "d",
        "lang": "en",
        "meta": {"k": 1},
    }
    with pytest.raises(PredictionsFileError, match="prediction record 'a2': 'qtype' must be a non-empty string"):
        prediction_record("a2", None, "q", "r", "p")


def test_readers_name_file_and_line(tmp_path):
    p = tmp_path / "preds.jsonl"
    good = json.dumps({**GOOD, "id": "a"})
    p.write_text("\n".join([good, json.dumps({**GOOD, "id": "b", "qtype": 5})]) + "\n", encoding="utf-8")
    for reader in (read_predictions, score.read_predictions):
        with pytest.raises(PredictionsFileError, match=r"preds.jsonl:2: 'qtype' must be a non-empty string"):
            reader(p)
    p.write_text("\n".join([good, good]) + "\n", encoding="utf-8")
    with pytest.raises(PredictionsFileError, match=r"preds.jsonl:2: duplicate id 'a' \(first at line 1\)"):
        read_predictions(p)
    p.write_bytes(good.encode() + b"\n\xff\n")
    with pytest.raises(PredictionsFileError, match=r"preds.jsonl:2: not UTF-8 text"):
        read_predictions(p)
    p.write_text(good + "\n\n", encoding="utf-8")
    recs = read_predictions(p)
    assert [(r["id"], r["_line"], r["prediction"]) for r in recs] == [("a", 1, "")]
    # judge reads the same records (prediction-shaped lines are checked by the schema)
    assert read_answers(p)[0]["id"] == "a"
    p.write_text(json.dumps({"id": "c", "question": "q", "prediction": "p", "meta": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(JudgeError, match=r"preds.jsonl:1: missing required field\(s\) qtype, reference"):
        read_answers(p)
