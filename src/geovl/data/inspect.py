"""Pre-flight statistics for a dataset file: what the model will see, before any training.

Counts per source and qtype, images per sample, image sizes, visual tokens per image under the
family's pixel bounds (registry token maths, no decoding: sizes come from image headers),
sequence lengths (exact with a model's tokenizer + chat template, else visual tokens plus an
approximate text count), samples over a token budget, answer lengths, and a preview.

Videos: frames and frame size from the container headers (:func:`geovl.imagery.video.sampled_shape`
under the video settings: the model folder's ``geovl_preprocess.json`` ``video``, else the defaults, with
``--video-fps`` / ``--video-max-frames`` on top), visual tokens per video (frames × tokens per frame,
:func:`geovl.models.registry.video_tokens` under the model's video-processor bounds), and the budget
rule of :func:`geovl.data.video_budget.fit_video_budget`: a sample over the budget is subsampled to fewer
frames when that fits, else dropped whole — both counted.
"""

from __future__ import annotations

import io
import json
import sys
from collections import Counter
from pathlib import Path

from PIL import Image

from ..errors import GeoVLError
from .io import count_samples, read_samples
from .schema import message_text


class InspectError(GeoVLError, ValueError):
    pass


def _pct(values: list[int], qs=(0, 50, 90, 99, 100)) -> dict:
    if not values:
        return {}
    v = sorted(values)
    out = {}
    for q in qs:
        idx = min(len(v) - 1, max(0, round(q / 100 * (len(v) - 1))))
        out[f"p{q}"] = v[idx]
    out["mean"] = round(sum(v) / len(v), 2)
    return out


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header only."""
    with Image.open(io.BytesIO(data)) as im:
        return im.size


class _TextCounter:
    """Exact token counts with a model folder's tokenizer and chat template."""

    def __init__(self, model_dir: str):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        if not self.tok.chat_template:
            raise InspectError(f"{model_dir}: the tokenizer has no chat template; give a Qwen-VL model folder")

    def count(self, messages: list[dict]) -> int:
        ids = self.tok.apply_chat_template(messages, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return len(ids)


def model_pixel_bounds(model: str) -> tuple[int, int]:
    """(min_pixels, max_pixels) a model folder's processor resizes with — its preprocessor config
    with the folder's ``geovl_preprocess.json`` applied, as the engine and training do."""
    from ..models.loading import load_processor
    from ..models.preprocess import PreprocessConfig

    try:
        proc = load_processor(model)
        pre = PreprocessConfig.load(model)
    except Exception as e:  # noqa: BLE001
        raise InspectError(f"{model}: cannot load the model's processor ({type(e).__name__}: {e})") from None
    if pre is not None:
        pre.apply(proc)
    return PreprocessConfig.bounds_of(proc)


def model_video_setup(model: str | None, fam, video: dict | None = None):
    """(VideoSettings, video-processor bounds for :func:`~geovl.models.registry.video_tokens`) for inspecting:
    the model folder's recorded video settings and its video processor (else the defaults and the family's
    stock video processor), with ``video`` (``VideoSettings`` field overrides) on top."""
    from ..imagery.video import VideoSettings
    from ..models.registry import video_bounds_of

    settings, bounds = {}, {}
    if model:
        from ..models.loading import load_processor
        from ..models.preprocess import PreprocessConfig

        try:
            pre = PreprocessConfig.load(model)
            bounds = video_bounds_of(load_processor(model))
        except Exception as e:  # noqa: BLE001
            raise InspectError(f"{model}: cannot load the model's processor ({type(e).__name__}: {e})") from None
        settings = pre.video_settings().to_dict() if pre is not None else {}
    settings.update({k: v for k, v in (video or {}).items() if v is not None})
    try:
        return VideoSettings.from_dict(settings), bounds
    except (TypeError, ValueError) as e:
        raise InspectError(f"video settings: {e}") from None


def inspect_dataset(
    path: str,
    family: str | None = None,
    model: str | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    budget: int | None = None,
    preview: int = 0,
    progress: bool = True,
    gpu_memory: int | None = None,
    plan=None,
    video: dict | None = None,
) -> dict:
    """``gpu_memory`` (bytes, needs ``model``): also estimate each sample's training memory under ``plan``
    (a :class:`geovl.models.memory.Plan`; default: the SFT recipe defaults) and flag what would not fit.
    ``video``: :class:`~geovl.imagery.video.VideoSettings` fields to override (``fps``, ``max_frames``, …)."""
    from ..imagery.video import VideoError, probe, sampled_shape
    from ..models.registry import get_family
    from .video_budget import VideoShape, fit_video_budget, video_cost

    if gpu_memory is not None and not model:
        raise InspectError("--gpu-memory needs --model (the estimate reads the model's config)")

    fam_name = family
    if model and not fam_name:
        cfg_path = Path(model) / "config.json"
        if not cfg_path.is_file():
            raise InspectError(f"{model}: not a model folder (no config.json)")
        fam_name = json.loads(cfg_path.read_text()).get("model_type")
    fam = get_family(fam_name or "qwen2_5_vl")
    counter = _TextCounter(model) if model else None
    bounds_from = "family defaults"
    if model and (min_pixels is None or max_pixels is None):
        lo, hi = model_pixel_bounds(model)
        min_pixels = lo if min_pixels is None else min_pixels
        max_pixels = hi if max_pixels is None else max_pixels
        bounds_from = "the model's processor (and geovl_preprocess.json)"
    if min_pixels is not None and max_pixels is not None and bounds_from == "family defaults":
        bounds_from = "options"
    vsettings, vbounds = model_video_setup(model, fam, video)
    count_text = (lambda t: len(counter.tok(t, add_special_tokens=False)["input_ids"])) if counter else None

    def cost(shape, n):
        return video_cost(fam, shape, n, count_text=count_text, **vbounds)

    n_total = count_samples(path)
    by_source: Counter = Counter()
    by_qtype: Counter = Counter()
    imgs_per_sample: Counter = Counter()
    turns: Counter = Counter()
    widths, heights, vis_tokens, seq_lens, ans_chars = [], [], [], [], []
    over_budget: list[str] = []
    previews: list[dict] = []
    bad_images = 0
    vids_per_sample: Counter = Counter()
    vid_frames, vid_tokens, vid_seconds = [], [], []
    bad_videos = 0
    subsampled: list[str] = []
    mem_rows: list[tuple[str, int, int]] = []  # (id, sequence tokens, vision patches) for the memory estimate

    it = read_samples(path)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=n_total, desc="inspect", unit="sample", file=sys.stderr, leave=False)
    for s in it:
        by_source[s["source"].split("#", 1)[0] or "(none)"] += 1
        by_qtype[s["qtype"]] += 1
        imgs_per_sample[len(s["images"])] += 1
        turns[sum(1 for m in s["messages"] if m["role"] == "assistant")] += 1
        ans_chars.append(len(s["answer"]))
        sample_vis = 0
        summaries = []
        for b in s["images"]:
            try:
                w, h = image_size(b)
            except Exception:  # noqa: BLE001
                bad_images += 1
                summaries.append("undecodable")
                continue
            t = fam.image_tokens(h, w, min_pixels, max_pixels)
            widths.append(w)
            heights.append(h)
            vis_tokens.append(t)
            sample_vis += t
            summaries.append(f"{w}x{h} px → {t} visual tokens")
        videos = s.get("videos") or []
        vids_per_sample[len(videos)] += 1
        shapes, vsummaries = [], []
        for b in videos:
            try:
                info = probe(b, vsettings)
            except VideoError as e:
                bad_videos += 1
                vsummaries.append(f"undecodable ({e.reason})")
                continue
            n, h, w = sampled_shape(info, vsettings)
            shapes.append(VideoShape(n, h, w, vsettings.fps))
            vid_seconds.append(round(info.duration_s, 1))
        if counter:
            # the template renders one <|image_pad|> per image; the processor expands it to t tokens
            base = counter.count(s["messages"]) + sample_vis - len(s["images"])
        else:
            text = "".join(message_text(m) for m in s["messages"])
            base = sample_vis + len(text.encode("utf-8")) // 3 + 10 * len(s["messages"])  # rough text estimate
        fit = fit_video_budget(base, shapes, budget, cost)
        vis_video = 0
        for shape, n in zip(shapes, fit.frames):
            t = video_tokens_of(fam, shape, n, vbounds)
            vid_frames.append(n)
            vid_tokens.append(t)
            vis_video += t
            vsummaries.append(f"{n} frames of {shape.width}x{shape.height} px → {t} visual tokens")
        seq = fit.tokens
        seq_lens.append(seq)
        mem_rows.append((s["id"], seq, (sample_vis + vis_video) * fam.merge_size**2))
        if fit.action == "subsampled":
            subsampled.append(s["id"])
        elif fit.action == "dropped":
            over_budget.append(s["id"])
        if len(previews) < preview:
            previews.append(
                {
                    "id": s["id"],
                    "qtype": s["qtype"],
                    "source": s["source"],
                    "images": summaries,
                    "videos": vsummaries,
                    "messages": [
                        {
                            "role": m["role"],
                            "content": "".join(
                                f"<{p['type']}>" if p["type"] in ("image", "video") else p["text"] for p in m["content"]
                            ),
                        }
                        for m in s["messages"]
                    ],
                    "answer": s["answer"],
                }
            )

    report = {
        "file": str(path),
        "samples": n_total,
        "family": fam.key,
        "pixel_bounds": {
            "min_pixels": fam.default_min_pixels if min_pixels is None else min_pixels,
            "max_pixels": fam.default_max_pixels if max_pixels is None else max_pixels,
            "from": bounds_from,
        },
        "by_source": dict(by_source.most_common()),
        "by_qtype": dict(sorted(by_qtype.items())),
        "images_per_sample": {str(k): v for k, v in sorted(imgs_per_sample.items())},
        "assistant_turns_per_sample": {str(k): v for k, v in sorted(turns.items())},
        "image_width": _pct(widths),
        "image_height": _pct(heights),
        "visual_tokens_per_image": _pct(vis_tokens),
        "sequence_length": _pct(seq_lens),
        "sequence_length_exact": counter is not None,
        "answer_chars": _pct(ans_chars),
        "undecodable_images": bad_images,
    }
    if vid_frames or bad_videos:
        report["videos_per_sample"] = {str(k): v for k, v in sorted(vids_per_sample.items())}
        report["video_settings"] = vsettings.to_dict()
        report["video_seconds"] = _pct(vid_seconds)
        report["frames_per_video"] = _pct(vid_frames)
        report["visual_tokens_per_video"] = _pct(vid_tokens)
        report["undecodable_videos"] = bad_videos
    if budget is not None:
        report["token_budget"] = budget
        report["over_budget"] = len(over_budget)  # dropped whole
        report["over_budget_ids"] = over_budget[:20]
        report["subsampled_to_fit"] = len(subsampled)
        report["subsampled_ids"] = subsampled[:20]
    if preview:
        report["preview"] = previews
    if gpu_memory is not None:
        from ..models.memory import Plan, check_batches, model_dims

        report["memory"] = check_batches(model_dims(model), plan or Plan(), mem_rows, gpu_memory)
    return report


def video_tokens_of(fam, shape, n_frames: int, bounds: dict) -> int:
    from ..models.registry import video_tokens

    return video_tokens(fam, n_frames, shape.height, shape.width, **bounds)


def format_report(r: dict) -> str:
    lines = [
        f"{r['file']}: {r['samples']} samples  (family {r['family']}, pixels {r['pixel_bounds']['min_pixels']}–{r['pixel_bounds']['max_pixels']}{', from ' + r['pixel_bounds']['from'] if r['pixel_bounds'].get('from') else ''})"
    ]

    def table(title: str, d: dict) -> None:
        if not d:
            return
        lines.append(f"\n{title}")
        width = max(len(str(k)) for k in d)
        for k, v in d.items():
            lines.append(f"  {str(k):<{width}}  {v}")

    table("by source", r["by_source"])
    table("by qtype", r["by_qtype"])
    table("images per sample", r["images_per_sample"])
    if "videos_per_sample" in r:
        table("videos per sample", r["videos_per_sample"])
    table("assistant turns per sample", r["assistant_turns_per_sample"])
    lines.append("\ndistributions (p0 / p50 / p90 / p99 / p100, mean)")
    for key, label in [
        ("image_width", "image width px"),
        ("image_height", "image height px"),
        ("visual_tokens_per_image", "visual tokens/image"),
        ("video_seconds", "video seconds"),
        ("frames_per_video", "frames/video (sampled)"),
        ("visual_tokens_per_video", "visual tokens/video"),
        ("sequence_length", "sequence tokens" + ("" if r["sequence_length_exact"] else " (≈, give --model for exact)")),
        ("answer_chars", "answer chars"),
    ]:
        d = r.get(key)
        if d:
            lines.append(
                f"  {label:<40} {d['p0']} / {d['p50']} / {d['p90']} / {d['p99']} / {d['p100']}   mean {d['mean']}"
            )
    if r.get("undecodable_images"):
        lines.append(f"\n  undecodable images: {r['undecodable_images']}")
    if r.get("undecodable_videos"):
        lines.append(f"\n  undecodable videos: {r['undecodable_videos']}")
    if "video_settings" in r:
        v = r["video_settings"]
        lines.append(f"  videos sampled at {v['fps']:g} fps, at most {v['max_frames']} frames / 视频采样设置")
    if "token_budget" in r:
        lines.append(
            f"\nover the {r['token_budget']}-token budget: {r['over_budget']} samples dropped whole (never truncated)"
            " / 超出预算整条丢弃"
        )
        if r["over_budget_ids"]:
            lines.append("  e.g. " + ", ".join(r["over_budget_ids"][:5]))
        if r.get("subsampled_to_fit"):
            lines.append(f"  {r['subsampled_to_fit']} video samples fit after subsampling frames / 抽帧后符合预算")
            lines.append("  e.g. " + ", ".join(r["subsampled_ids"][:5]))
    if "memory" in r:
        from ..models.memory import format_check

        lines.append("\n" + format_check(r["memory"]))
    for p in r.get("preview", []):
        lines.append(f"\n--- {p['id']}  [{p['qtype']}]  {p['source']}")
        for i, s in enumerate(p["images"], 1):
            lines.append(f"  image {i}: {s}")
        for i, s in enumerate(p.get("videos", []), 1):
            lines.append(f"  video {i}: {s}")
        for m in p["messages"]:
            lines.append(f"  {m['role']}: {m['content']}")
    return "\n".join(lines)
