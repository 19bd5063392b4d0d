"""User-facing strings of the web app in Chinese (default) and English.

Every label, button, card and message the page shows comes from :data:`STRINGS`; both languages
have the same keys (checked by the tests). ``t(key, lang, **fmt)`` looks one up.
"""

from __future__ import annotations

LANGS = ("zh", "en")

QUICK_QUESTIONS = {
    "zh": ["本季度耕地面积变化情况？", "疑似违规建设的分布区域？", "保护区边界是否被占用？", "近一年土地利用结构趋势？"],
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
        "chat_placeholder": "上传一张或多张影像（PNG/JPEG/GeoTIFF），然后提问，或点击下方的常用问题。",
        "input_placeholder": "输入问题，点击回形针上传影像，按回车发送",
        "quick_heading": "**常用问题**",
        "retry": "重新生成",
        "clear": "清空对话",
        "settings": "生成设置",
        "temperature": "温度（0 = 确定性输出）",
        "max_new_tokens": "最大生成长度（token）",
        "panel_heading": "### 测量与地图",
        "panel_empty": "此处将显示面积测量、变化统计与地图。当前版本尚未接入测量模块。",
        "about_card": (
            "### 系统能做什么\n"
            "- 对上传的遥感影像进行问答：土地利用类型、地物有无、变化与疑似违规建设的描述；\n"
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
    },
    "en": {
        "page_title": "County Land-Use Q&A",
        "title": "# County Land-Use Q&A\nUpload remote-sensing images and ask in English or Chinese; multi-turn chat remembers earlier images.",
        "lang_label": "Language / 语言",
        "chat_label": "Chat",
        "chat_placeholder": "Upload one or more images (PNG/JPEG/GeoTIFF), then ask a question or click a quick question below.",
        "input_placeholder": "Type a question, click the paper clip to attach images, press Enter to send",
        "quick_heading": "**Quick questions**",
        "retry": "Retry",
        "clear": "Clear chat",
        "settings": "Generation settings",
        "temperature": "Temperature (0 = deterministic)",
        "max_new_tokens": "Max new tokens",
        "panel_heading": "### Measurements & maps",
        "panel_empty": "Area measurements, change statistics and maps will appear here. The measurement module is not connected yet.",
        "about_card": (
            "### What this system does\n"
            "- Answers questions about uploaded remote-sensing images: land-use types, presence of features, "
            "descriptions of changes and suspected illegal construction;\n"
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
    },
}


def t(key: str, lang: str, **fmt) -> str:
    lang = lang if lang in STRINGS else "zh"
    s = STRINGS[lang][key]
    return s.format(**fmt) if fmt else s


def quick_questions(lang: str) -> list[str]:
    return list(QUICK_QUESTIONS[lang if lang in QUICK_QUESTIONS else "zh"])
