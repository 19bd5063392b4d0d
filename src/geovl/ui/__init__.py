"""The bilingual web app (Gradio): chat (:mod:`.webapp`), its texts (:mod:`.i18n`) and the GeoTIFF
measurement and map panel (:mod:`.geo_panel`, :mod:`.geo_view`). Only :mod:`geovl.commands` imports it."""
