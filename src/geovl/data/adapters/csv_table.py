"""A table (CSV/TSV) + a column mapping -> samples.

The mapping comes from a shipped preset (``--preset building-defect``,
``--preset image-question-answer``; files in ``geovl/data/presets/``) or a YAML file
(``--mapping FILE.yaml``) with these keys::

    name: my-table                  # used in meta["preset"]
    lang: zh | en | auto            # meta["lang"]; auto = zh if the question has CJK characters
    encoding: utf-8-sig             # default utf-8-sig (a BOM is accepted); e.g. gb18030
    delimiter: ","                  # default: "\\t" for .tsv, "," otherwise
    id_column: image_id             # optional; default "<file stem>-<row>"
    image_column: image_path        # optional (text-only rows without it)
    question: "fixed question"      # either a fixed question ...
    question_column: question       # ... or a column (``--question`` overrides both)
    answer_column: answer           # either an answer column ...
    answer_template: "风险：{风险}"  # ... or a template over ``fields``
    fields:                         # structured fields (kept in meta["fields"])
      风险等级: {column: data_风险等级, allowed: [轻微, 中等, 严重]}
    qtype: open                     # default qtype
    qtype_column: qtype             # optional column; used when present in the table
    meta_columns: [extra1]          # copied into meta when present
    system: "system prompt"         # optional

Missing required columns are fatal (the error names the file and the column), and so is a malformed
table — a quote that does not close where its cell ends (the error names the line the record starts
on; read leniently, an unclosed quote would turn the following rows into one cell). Per-row
problems are rejected: ``empty_question``, ``empty_answer``, ``empty_field``,
``bad_field_value`` (not in ``allowed``), ``bad_row`` (more cells than header columns),
``path_escape`` / ``missing_image`` / ... for images (paths relative to ``--images-root``,
default: the table's folder).
"""

from __future__ import annotations

import csv
import string
from pathlib import Path
from typing import Iterator

from ...imagery.decode import ImageError, resolve_image_path
from ..convert import ConvertError, ConvertOptions, ImageCache
from ..schema import QTYPES, SampleError, make_sample

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"
KEYS = {
    "name",
    "description",
    "lang",
    "encoding",
    "delimiter",
    "id_column",
    "image_column",
    "question",
    "question_column",
    "answer_column",
    "answer_template",
    "fields",
    "qtype",
    "qtype_column",
    "meta_columns",
    "system",
}


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_mapping(preset: str | None = None, mapping: str | Path | None = None) -> dict:
    """Load and validate a preset (by name) or a mapping file; raises :class:`ConvertError`."""
    import yaml

    if preset:
        path = PRESET_DIR / f"{preset}.yaml"
        if not path.is_file():
            raise ConvertError(f"unknown preset {preset!r}; available presets: {', '.join(list_presets())}")
    elif mapping:
        path = Path(mapping)
        if not path.is_file():
            raise ConvertError(f"{path}: mapping file does not exist")
    else:
        raise ConvertError(f"--from csv needs --preset ({', '.join(list_presets())}) or --mapping FILE.yaml")
    try:
        m = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path}: not a readable YAML mapping ({e})") from None
    return validate_mapping(m, path)


def validate_mapping(m, path) -> dict:
    def bad(msg):
        return ConvertError(f"{path}: {msg}")

    if not isinstance(m, dict):
        raise bad("a mapping must be a YAML object")
    unknown = sorted(set(m) - KEYS)
    if unknown:
        raise bad(f"unknown key(s) {unknown}; allowed: {sorted(KEYS)}")
    m = dict(m)
    m.setdefault("name", Path(path).stem)
    if ("question" in m) == ("question_column" in m):
        raise bad("give exactly one of 'question' (fixed text) or 'question_column'")
    if ("answer_column" in m) == ("answer_template" in m):
        raise bad("give exactly one of 'answer_column' or 'answer_template'")
    fields = {}
    for name, spec in (m.get("fields") or {}).items():
        if isinstance(spec, str):
            spec = {"column": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("column"), str):
            raise bad(f"field {name!r} needs a 'column'")
        allowed = spec.get("allowed")
        if allowed is not None and (not isinstance(allowed, list) or not allowed):
            raise bad(f"field {name!r}: 'allowed' must be a non-empty list")
        fields[str(name)] = {
            "column": spec["column"],
            "allowed": [str(a) for a in allowed] if allowed else None,
            "required": bool(spec.get("required", True)),
        }
    m["fields"] = fields
    if "answer_template" in m:
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(m["answer_template"]) if f is not None}
        except ValueError as e:
            raise bad(f"answer_template: {e}") from None
        missing = sorted(names - set(fields))
        if missing:
            raise bad(f"answer_template uses {missing} which are not declared under 'fields'")
    m.setdefault("qtype", "open")
    if m["qtype"] not in QTYPES:
        raise bad(f"qtype {m['qtype']!r} not in {QTYPES}")
    m.setdefault("lang", "auto")
    m.setdefault("encoding", "utf-8-sig")
    m["meta_columns"] = list(m.get("meta_columns") or [])
    return m


def _is_cjk(text: str) -> bool:
    return any("\u4e00" <= c <= "\u9fff" for c in text)


def iter_records(o: ConvertOptions) -> Iterator[tuple[str, object]]:
    m = load_mapping(o.preset, o.mapping)
    path = o.input
    if not path.is_file():
        raise ConvertError(f"{path}: --from csv expects a table file")
    question = o.question if o.question else m.get("question")
    qcol = None if o.question else m.get("question_column")
    required = [c for c in (m.get("id_column"), m.get("image_column"), qcol, m.get("answer_column")) if c]
    required += [f["column"] for f in m["fields"].values() if f["required"]]
    delim = m.get("delimiter") or ("\t" if path.suffix.lower() == ".tsv" else ",")
    root = o.images_root or path.parent
    cache = ImageCache(o.pixel_limit, size=8, opts=o)
    csv.field_size_limit(1 << 24)
    with open(path, encoding=m["encoding"], newline="") as f:
        # strict: a quote that does not close where a cell ends is an error, not a cell that silently runs
        # on over the next rows (an unclosed quote used to swallow the rows after it)
        reader = csv.reader(f, delimiter=delim, strict=True)
        start = 1  # the line the record being read starts on
        try:
            header = next(reader, None)
            if header is None:
                raise ConvertError(f"{path}: empty table (no header row)")
            header = [h.strip() for h in header]
            dup = sorted({h for h in header if header.count(h) > 1})
            if dup:
                raise ConvertError(f"{path}: duplicate column name(s) {dup}")
            missing = [c for c in required if c not in header]
            if missing:
                raise ConvertError(
                    f"{path}: missing required column(s) {missing} for mapping {m['name']!r}; the table has {header}"
                )
            n = 0
            while True:
                start = reader.line_num + 1
                cells = next(reader, None)
                if cells is None:
                    break
                if not any(c.strip() for c in cells):
                    continue  # blank line
                n += 1
                source = f"{path.name}#row{n}"
                try:
                    item = _build(cells, header, n, m, question, qcol, root, cache, path)
                except (SampleError, ImageError) as e:
                    item = e
                yield source, item
        except UnicodeDecodeError as e:
            raise ConvertError(
                f"{path}: not {m['encoding']} text near data row {reader.line_num} ({e.reason}); "
                "set 'encoding:' in the mapping (e.g. gb18030) or re-save the table as UTF-8"
            ) from None
        except csv.Error as e:
            raise ConvertError(
                f"{path}: malformed table in the record that starts on line {start} (found at line {reader.line_num}: {e}); "
                'most likely an unclosed quote (") — fix that line; nothing was converted'
            ) from None


def _build(cells, header, n, m, question, qcol, root, cache, path) -> dict:
    if len(cells) > len(header):
        raise SampleError("bad_row", f"{len(cells)} cells but {len(header)} columns")
    row = dict(zip(header, [c.strip() for c in cells]))
    get = lambda c: row.get(c, "")  # noqa: E731 - short rows: missing cells are empty
    q = get(qcol) if qcol else (question or "")
    if not q.strip():
        raise SampleError("empty_question", f"column {qcol!r} is empty" if qcol else "no question")
    fields = {}
    for name, spec in m["fields"].items():
        v = get(spec["column"])
        if not v and spec["required"]:
            raise SampleError("empty_field", f"{name} ({spec['column']}) is empty")
        if spec["allowed"] and v not in spec["allowed"] and (v or spec["required"]):
            raise SampleError("bad_field_value", f"{name} = {v!r} not in {spec['allowed']}")
        fields[name] = v
    if "answer_template" in m:
        answer = m["answer_template"].format_map(fields).strip()
    else:
        answer = get(m["answer_column"])
    if not answer.strip():
        raise SampleError("empty_answer", f"column {m.get('answer_column')!r} is empty")
    qtype = m["qtype"]
    if m.get("qtype_column") and get(m["qtype_column"]):
        qtype = get(m["qtype_column"])
    images, meta = [], {"preset": m["name"], "row": n}
    lang = m["lang"]
    meta["lang"] = ("zh" if _is_cjk(q + answer) else "en") if lang == "auto" else lang
    if m.get("image_column"):
        ref = get(m["image_column"])
        loaded = cache.load(resolve_image_path(root, ref))
        images.append(loaded.data)
        meta["image_path"] = ref
        meta.update(loaded.meta)
    if fields:
        meta["fields"] = fields
    for c in m["meta_columns"]:
        if c in row:
            meta[c] = row[c]
    rid = get(m["id_column"]) if m.get("id_column") else ""
    if m.get("id_column"):
        meta[m["id_column"]] = rid
    return make_sample(
        id=rid or f"{path.stem}-{n}",
        question=q.strip(),
        answer=answer,
        images=images,
        qtype=qtype,
        source=f"{path.name}#row{n}",
        meta=meta,
        system=m.get("system"),
    )
