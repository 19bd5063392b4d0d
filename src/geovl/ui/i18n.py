"""User-facing strings of the web app in Chinese (default) and English.

Every label, button, card and message the page shows comes from :data:`STRINGS`; both languages
have the same keys (checked by the tests). ``t(key, lang, **fmt)`` looks one up.
"""

from __future__ import annotations

LANGS = ("zh", "en")

QUICK_QUESTIONS = {
    "zh": [
        "本季度耕地面积变化情况？",
        "疑似违规建设的分布区域？",
        "保护区边界是否被占用？",
        "近一年土地利用结构趋势？",
    ],
    "en": [
        "How has the cultivated land area changed this quarter?",
        "Where are the suspected illegal constructions?",
        "Is the protected-area boundary being encroached on?",
        "What is the land-use structure trend over the past year?",
    ],
}

STRINGS: dict[str, dict[str, str]] = {
    "zh": {
        "page_title": "县域国土空间智能问答",
        "title": "# 县域国土空间智能问答\n上传遥感影像，用中文或英文提问；支持多轮对话，之前上传的影像会被记住。",
        "lang_label": "语言 / Language",
        "chat_label": "对话",
        "chat_placeholder": "上传一张或多张影像（PNG/JPEG/GeoTIFF）或视频（MP4 等），然后提问，或点击下方的常用问题。",
        "input_placeholder": "输入问题，点击回形针上传影像或视频，按回车发送",
        "quick_heading": "**常用问题**",
        "retry": "重新生成",
        "clear": "清空对话",
        "settings": "生成设置",
        "temperature": "温度（0 = 确定性输出）",
        "max_new_tokens": "最大生成长度（token）",
        "panel_heading": "### 测量与地图",
        "boxes_found": "### 框出的目标\n回答中有 {n} 个框（红色，像素坐标，位于第 {image} 幅图上）。[下载 GeoJSON（像素坐标）]({url})\n\n地图坐标请对 GeoTIFF 使用 `geovl detect`。",
        "panel_empty": "在对话中上传一幅或两幅 GeoTIFF（地理配准影像，两幅时为前、后时相）并提问，此处将显示面积测量、变化统计与地图。",
        "about_card": (
            "### 系统能做什么\n"
            "- 对上传的遥感影像进行问答：土地利用类型、地物有无、变化与疑似违规建设的描述；\n"
            "- 视频问答（无人机航拍、现场视频）与多期影像时间序列问答（右侧“时间序列”）；\n"
            "- 多轮对话：后续问题可以引用之前的影像；\n"
            "- 回答逐字流式显示，可随时重新生成。"
        ),
        "limits_card": (
            "### 使用限制\n"
            "- **面积、长度、数量等数值来自测量模块**（右侧“测量与地图”面板），不是由模型生成；模型给出的数字仅供参考。\n"
            "- 模型回答可能出错，须经人工核查，**不能作为执法或审批依据**。\n"
            "- 影像在{where}处理；单张影像不超过 {max_mb} MB，每次对话最多 {max_images} 张。"
        ),
        "where_local": "本机",
        "where_remote": "服务器 {url}",
        "model_line": "模型：`{name}`",
        "empty_answer": "（模型没有生成内容）",
        "error_prefix": "出错：",
        "err_no_input": "请输入问题或上传影像。",
        "err_too_many": "本次对话已有 {n} 张影像，最多允许 {max} 张；请清空对话后再上传。",
        "err_bad_image": "影像 {name} 无法使用：{why}",
        "err_nothing_to_retry": "没有可以重新生成的回答。",
        "err_bad_video": "视频 {name} 无法使用：{why}",
        "err_too_many_videos": "本次对话已有 {n} 个视频，最多允许 {max} 个；请清空对话后再上传。",
        "limits_video": "\n- 视频（MP4/WebM/MOV/MKV/AVI）单个不超过 {max_mb} MB、时长不超过 {max_minutes} 分钟，每次对话最多 {max_videos} 个；模型看到的是按设定帧率抽取的若干帧。",
        # -- the time-series card (geovl.ui.timeseries) --
        "ts_heading": "### 时间序列\n上传同一地点多期 GeoTIFF，按日期排序后一起提问（例如“这块耕地是哪一年开始被占用的？”）。",
        "ts_files_label": "多期 GeoTIFF（至少两期）",
        "ts_dates_label": "日期（每个文件一个，按上传顺序；留空则从文件名或影像标签读取）",
        "ts_dates_placeholder": "2019-06-01, 2021-06-01, 2023-06-01",
        "ts_empty": "尚未上传时间序列。文件名中含日期（如 `county_2019-06-01.tif`）或影像带日期标签时会自动识别。",
        "ts_ask": "就时间序列提问",
        "ts_table_head": "| 序号 | 日期 | 文件 | 日期来源 |\n|---|---|---|---|",
        "ts_source_typed": "手动输入",
        "ts_source_name": "文件名",
        "ts_source_tag": "影像标签",
        "ts_caption": "影像{i}（{date}）",
        "ts_default_question": "这几期影像之间发生了哪些变化？",
        "ts_err_too_few": "时间序列至少需要两期影像（现有 {n} 个文件）。",
        "ts_err_too_many": "时间序列有 {n} 个文件，最多允许 {max} 个。",
        "ts_err_count": "输入了 {n_dates} 个日期，但上传了 {n_files} 个文件；请每个文件输入一个日期。",
        "ts_err_no_date": "文件 {name} 的日期无法从文件名或影像标签读取；请在日期框中按上传顺序输入每个文件的日期。",
        "ts_err_bad_date": "日期 {value} 无效；请使用 YYYY-MM-DD 格式（如 2019-06-01）。",
        "ts_err_duplicate": "{a} 与 {b} 的日期相同（{date}）；每期影像的日期须不同。",
        # -- the measurement & map panel (geovl.ui.geo_panel) --
        "geo_classes_label": "地类图（可选）：单波段分类 GeoTIFF，两期时按前、后时相顺序上传；可另附类别表 JSON",
        "geo_table_label": "类别表（用于上传的地类图）",
        "geo_table_auto": "自动识别",
        "geo_order_label": "时相顺序",
        "geo_order_auto": "自动（按影像日期标签，无标签时按上传顺序）",
        "geo_order_upload": "按上传顺序（先上传的为前时相）",
        "geo_order_reversed": "反向（先上传的为后时相）",
        "geo_tile_label": "疑似问题图的图块大小（像素）",
        "geo_map_button": "生成疑似问题图",
        "geo_files_label": "下载：疑似问题图（GeoTIFF、GeoJSON、PNG）、测量结果（JSON）、变化图斑（GeoJSON）",
        "geo_image": "影像",
        "geo_before": "前时相",
        "geo_after": "后时相",
        "geo_how_upload": "按上传顺序",
        "geo_how_reversed": "按上传顺序反向",
        "geo_how_date": "按影像日期标签",
        "geo_inputs": "**影像**：{inputs}",
        "geo_grid": "**坐标系** {crs}；像元 {pixel}；网格 {width} × {height}",
        "geo_classes_supplied": "**地类**：来自上传的地类图 {files}（类别表：{table}）",
        "geo_classes_derived": "**地类**：未上传地类图，使用由光谱指数推导的粗略类别（水体、茂密/稀疏植被、建设用地、裸地）；上传地类图可得到耕地、林地等准确类别。",
        "geo_areas_heading": "#### {date}各类面积",
        "geo_col_class": "类别",
        "geo_col_share": "占比",
        "geo_total": "合计",
        "geo_zero_classes": "面积为 0 的类别：{names}",
        "geo_net_heading": "#### 各类净变化（公顷）",
        "geo_col_before": "前时相",
        "geo_col_after": "后时相",
        "geo_col_gain": "新增",
        "geo_col_loss": "减少",
        "geo_col_net": "净变化",
        "geo_col_net_mu": "净变化（亩）",
        "geo_changed": "变化总面积 {area}，占两期均有效面积的 {share}。",
        "geo_no_change": "两期之间没有变化。",
        "geo_matrix_heading": "#### 变化矩阵（公顷；行为前时相，列为后时相）",
        "geo_matrix_corner": "前 \\ 后",
        "geo_patches_heading": "#### 最大变化图斑（地图中的编号）",
        "geo_patch_line": "{rank}. {pair}：{ha} 公顷（{mu} 亩），{px} 像元，中心 {at}",
        "geo_method_heading": "#### 方法与不确定性",
        "geo_method": "**方法**：{text}",
        "geo_uncertainty": "**精度说明**：{text}",
        "geo_note": "**注**：{text}",
        "geo_grounded": "**回答基于以上测量结果**：测量数值已按固定格式写入模型提示，模型不自行估算面积。",
        "geo_generating": "测量完成，正在生成回答……",
        "geo_mixed_images": "本轮附带的普通图片（{names}）不在测量提示中；回答只使用 GeoTIFF 及其测量结果。",
        "geo_measure_failed": "**测量失败**：{why}\n\n本次回答未使用测量结果（按普通图片问答）。",
        "geo_no_crs": "{names} 没有坐标系（非地理配准），无法量算面积，按普通图片回答。",
        "geo_kept_two": "只使用最近上传的两幅 GeoTIFF：{names}。",
        "geo_preview_caption": "*地图：真彩色影像；黄色轮廓为变化图斑（编号见上表）。*",
        "geo_preview_caption_one": "*地图：真彩色影像。*",
        "geo_map_heading": "#### 疑似问题图",
        "geo_map_summary": "问题：“{question}”。共 {tiles} 个图块（{tile} 像素，重叠 {overlap} 像素）：是 {yes}，否 {no}，无法判断 {unknown}，无数据 {nodata}；**标记 {flagged} 块**（地图中红色方框）。判断方式：{how}。",
        "geo_map_how_choice": "比较“是/否”的概率",
        "geo_map_how_text": "模型生成的回答",
        "geo_map_warning": "逐块判断由模型完成，可能出错，须人工核查。",
        "geo_need_geotiff": "请先在对话中上传 GeoTIFF（带坐标系）并提问。",
        "geo_need_question": "请先在输入框中写一个是非问题（例如“图中是否有新建建筑？”），或先提问一次。",
        "geo_map_failed": "生成疑似问题图失败：{why}",
    },
    "en": {
        "page_title": "County Land-Use Q&A",
        "title": "# County Land-Use Q&A\nUpload remote-sensing images and ask in English or Chinese; multi-turn chat remembers earlier images.",
        "lang_label": "Language / 语言",
        "chat_label": "Chat",
        "chat_placeholder": "Upload one or more images (PNG/JPEG/GeoTIFF) or videos (MP4, …), then ask a question or click a quick question below.",
        "input_placeholder": "Type a question, click the paper clip to attach images or videos, press Enter to send",
        "quick_heading": "**Quick questions**",
        "retry": "Retry",
        "clear": "Clear chat",
        "settings": "Generation settings",
        "temperature": "Temperature (0 = deterministic)",
        "max_new_tokens": "Max new tokens",
        "panel_heading": "### Measurements & maps",
        "boxes_found": "### Located objects\nThe answer has {n} box(es) (red, pixel coordinates, on image {image}). [Download GeoJSON (pixel coordinates)]({url})\n\nFor map coordinates run `geovl detect` on a GeoTIFF.",
        "panel_empty": "Upload one or two GeoTIFFs (georeferenced images; two = before and after) in the chat and ask a question: area measurements, change statistics and maps appear here.",
        "about_card": (
            "### What this system does\n"
            "- Answers questions about uploaded remote-sensing images: land-use types, presence of features, "
            "descriptions of changes and suspected illegal construction;\n"
            "- Questions about videos (drone flights, site videos) and image time series (the “Time series” card);\n"
            "- Multi-turn chat: follow-up questions can refer to earlier images;\n"
            "- Answers stream word by word and can be regenerated."
        ),
        "limits_card": (
            "### Limits\n"
            "- **Numbers such as areas, lengths and counts come from the measurement module** (the “Measurements & maps” "
            "panel), not from the model; numbers the model writes are indicative only.\n"
            "- Answers can be wrong and must be checked by a person; **they are not a basis for enforcement or permits**.\n"
            "- Images are processed {where}; at most {max_mb} MB per image and {max_images} images per conversation."
        ),
        "where_local": "on this machine",
        "where_remote": "by the server {url}",
        "model_line": "Model: `{name}`",
        "empty_answer": "(the model generated no text)",
        "error_prefix": "Error: ",
        "err_no_input": "Type a question or attach an image.",
        "err_too_many": "This conversation already has {n} images; at most {max} are allowed. Clear the chat to upload more.",
        "err_bad_image": "Image {name} cannot be used: {why}",
        "err_nothing_to_retry": "There is no answer to regenerate.",
        "err_bad_video": "Video {name} cannot be used: {why}",
        "err_too_many_videos": "This conversation already has {n} videos; at most {max} are allowed. Clear the chat to upload more.",
        "limits_video": "\n- Videos (MP4/WebM/MOV/MKV/AVI): at most {max_mb} MB and {max_minutes} minutes each, {max_videos} per conversation; the model sees frames sampled at a set rate.",
        # -- the time-series card (geovl.ui.timeseries) --
        "ts_heading": "### Time series\nUpload GeoTIFFs of one place on several dates; they are put in date order and asked about together (e.g. “In which year was this cropland first built on?”).",
        "ts_files_label": "Dated GeoTIFFs (two or more)",
        "ts_dates_label": "Dates (one per file, in upload order; empty: read from file names or image tags)",
        "ts_dates_placeholder": "2019-06-01, 2021-06-01, 2023-06-01",
        "ts_empty": "No time series uploaded. Dates in file names (e.g. `county_2019-06-01.tif`) or in image tags are read automatically.",
        "ts_ask": "Ask about the time series",
        "ts_table_head": "| # | Date | File | Date from |\n|---|---|---|---|",
        "ts_source_typed": "typed",
        "ts_source_name": "file name",
        "ts_source_tag": "image tag",
        "ts_caption": "Image {i} ({date})",
        "ts_default_question": "What changed between these dates?",
        "ts_err_too_few": "A time series needs at least two images ({n} file(s) given).",
        "ts_err_too_many": "The time series has {n} files; at most {max} are allowed.",
        "ts_err_count": "{n_dates} dates typed for {n_files} files; type one date per file.",
        "ts_err_no_date": "No date could be read from the name or tags of {name}; type each file's date in upload order in the dates box.",
        "ts_err_bad_date": "Date {value} is not valid; use YYYY-MM-DD (e.g. 2019-06-01).",
        "ts_err_duplicate": "{a} and {b} have the same date ({date}); each image needs its own date.",
        # -- the measurement & map panel (geovl.ui.geo_panel) --
        "geo_classes_label": "Class rasters (optional): single-band categorical GeoTIFFs, for two dates before then after; a class-table JSON may be added",
        "geo_table_label": "Class table (for uploaded class rasters)",
        "geo_table_auto": "Auto-detect",
        "geo_order_label": "Date order",
        "geo_order_auto": "Auto (image date tags, else upload order)",
        "geo_order_upload": "Upload order (first uploaded = earlier)",
        "geo_order_reversed": "Reversed (first uploaded = later)",
        "geo_tile_label": "Tile size of the flags map (px)",
        "geo_map_button": "Map flagged tiles",
        "geo_files_label": "Downloads: flags map (GeoTIFF, GeoJSON, PNG), measurement (JSON), change patches (GeoJSON)",
        "geo_image": "image",
        "geo_before": "before",
        "geo_after": "after",
        "geo_how_upload": "by upload order",
        "geo_how_reversed": "by reversed upload order",
        "geo_how_date": "by image date tags",
        "geo_inputs": "**Images**: {inputs}",
        "geo_grid": "**CRS** {crs}; pixel {pixel}; grid {width} × {height}",
        "geo_classes_supplied": "**Classes**: from the uploaded class rasters {files} (table: {table})",
        "geo_classes_derived": "**Classes**: no class raster uploaded, so coarse classes are derived from spectral indices (water, dense/sparse vegetation, built-up, bare); upload a land-cover map for exact classes such as cropland and forest.",
        "geo_areas_heading": "#### Areas per class — {date}",
        "geo_col_class": "Class",
        "geo_col_share": "Share",
        "geo_total": "Total",
        "geo_zero_classes": "Classes with zero area: {names}",
        "geo_net_heading": "#### Net change per class (ha)",
        "geo_col_before": "Before",
        "geo_col_after": "After",
        "geo_col_gain": "Gain",
        "geo_col_loss": "Loss",
        "geo_col_net": "Net",
        "geo_col_net_mu": "Net (mu 亩)",
        "geo_changed": "Changed area {area}, {share} of the area valid on both dates.",
        "geo_no_change": "No change between the dates.",
        "geo_matrix_heading": "#### Change matrix (ha; rows before, columns after)",
        "geo_matrix_corner": "before \\ after",
        "geo_patches_heading": "#### Largest change patches (numbered on the map)",
        "geo_patch_line": "{rank}. {pair}: {ha} ha ({mu} mu), {px} px, centre {at}",
        "geo_method_heading": "#### Method and uncertainty",
        "geo_method": "**Method**: {text}",
        "geo_uncertainty": "**Uncertainty**: {text}",
        "geo_note": "**Note**: {text}",
        "geo_grounded": "**The answer is grounded in these measurements**: the measured figures are in the model's prompt in the fixed form; the model does not estimate areas itself.",
        "geo_generating": "Measured; generating the answer…",
        "geo_mixed_images": "The plain images of this turn ({names}) are not part of the measurement prompt; the answer uses the GeoTIFFs and their measurements only.",
        "geo_measure_failed": "**Measurement failed**: {why}\n\nThis answer does not use measurements (plain image Q&A).",
        "geo_no_crs": "{names} has no CRS (not georeferenced): areas cannot be measured; answered as a plain image.",
        "geo_kept_two": "Only the two most recently uploaded GeoTIFFs are used: {names}.",
        "geo_preview_caption": "*Map: true colour; yellow outlines are change patches (numbers as in the list above).*",
        "geo_preview_caption_one": "*Map: true colour.*",
        "geo_map_heading": "#### Flagged tiles",
        "geo_map_summary": "Question: “{question}”. {tiles} tiles ({tile} px, overlap {overlap} px): yes {yes}, no {no}, unknown {unknown}, nodata {nodata}; **{flagged} flagged** (red squares on the map). Decided by: {how}.",
        "geo_map_how_choice": "comparing the probabilities of yes and no",
        "geo_map_how_text": "the model's generated answer",
        "geo_map_warning": "Tiles are judged by the model and can be wrong; check them by eye.",
        "geo_need_geotiff": "Upload a GeoTIFF (with a CRS) in the chat and ask a question first.",
        "geo_need_question": "Type a yes/no question in the message box (e.g. “Are there new buildings?”) or ask one first.",
        "geo_map_failed": "Could not make the flags map: {why}",
    },
}


def t(key: str, lang: str, **fmt) -> str:
    lang = lang if lang in STRINGS else "zh"
    s = STRINGS[lang][key]
    return s.format(**fmt) if fmt else s


def quick_questions(lang: str) -> list[str]:
    return list(QUICK_QUESTIONS[lang if lang in QUICK_QUESTIONS else "zh"])
