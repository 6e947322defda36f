"""Map the names of published HCL-AL vocabulary files onto this project's site ids.

The published method ships two JSON files that a user may hold:

- a *library* that nests names: body region -> coarse name -> fine entries. The fine
  entries are either a list of names or a mapping of a generic key to the displayed
  name (for example ``"Kidney": "Left kidney"``). A file without the region level
  (coarse name -> fine entries) is accepted too;
- a *descriptions* file: a mapping of names to the sentence that replaces each name
  before text encoding.

Each coarse and fine name is matched to one of our sites by three rules, tried in order.
First come the synonym table and name patterns below. Next, the normalised name must equal
one of our site names or ids. Last, the same words in another order are accepted. Names that match nothing are reported, never
guessed. A name may match a coarse site of ours when the published name is broader than
any of our fine sites (for example a whole liver segment 4, which we split into 4a and 4b).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from models.vocabulary import Site, Vocabulary

SPELLING_VARIANTS = {
    "oesophagus": "esophagus",
    "oesophageal": "esophageal",
    "caecum": "cecum",
    "haemorrhoidal": "hemorrhoidal",
    "paediatric": "pediatric",
    "tumour": "tumor",
    "centre": "center",
    "navel": "umbilicus",
    "collarbone": "clavicle",
    "breastbone": "sternum",
    "armpit": "axilla",
}

# Published-style names whose words differ from ours; keys are normalised names.
SYNONYMS: dict[str, str] = {
    "outside the body": "outside_body_external",
    "brain": "brain_midline",
    "skull": "skull",
    "left eye": "eyeball_left",
    "right eye": "eyeball_right",
    "left ear": "external_ear_left",
    "right ear": "external_ear_right",
    "nose": "nasal_cavity_sinuses",
    "left tonsil": "palatine_tonsil_left",
    "right tonsil": "palatine_tonsil_right",
    "tongue": "oral_tongue",
    "pharynx": "oropharynx",
    "isthmus of thyroid": "thyroid_isthmus",
    "thyroid gland": "thyroid_gland",
    "left lobe of thyroid": "thyroid_left_lobe",
    "right lobe of thyroid": "thyroid_right_lobe",
    "left supraclavicular": "supraclavicular_node_left",
    "right supraclavicular": "supraclavicular_node_right",
    "left retropharyngeal": "retropharyngeal_node_left",
    "right retropharyngeal": "retropharyngeal_node_right",
    "left pulmonary hilum": "hilar_station_10l",
    "right pulmonary hilum": "hilar_station_10r",
    "pericardiophrenic region": "chest_wall_nodes",
    "esophagus": "thoracic_esophagus",
    "trachea": "central_airways",
    "thoracic aorta": "thoracic_great_vessels",
    "aorta": "thoracic_great_vessels",
    "heart": "heart",
    "left lung": "left_upper_lobe",
    "right lung": "right_upper_lobe",
    "porta hepatis": "porta_hepatis",
    "splenic hilum": "splenic_hilum",
    "cardia of stomach": "gastric_cardia",
    "stomach": "stomach",
    "spleen": "spleen",
    "pancreas": "pancreas",
    "gallbladder": "gallbladder",
    "liver": "liver",
    "left kidney": "kidney_left",
    "right kidney": "kidney_right",
    "left adrenal gland": "adrenal_gland_left",
    "right adrenal gland": "adrenal_gland_right",
    "left diaphragm": "hemidiaphragm_left",
    "right diaphragm": "hemidiaphragm_right",
    "abdominal aorta": "abdominal_aorta",
    "appendix": "appendix",
    "cecum": "caecum",
    "rectum": "rectum_anus",
    "anal canal": "anal_canal",
    "small intestine": "small_intestine",
    "umbilicus": "umbilicus",
    "bladder": "urinary_bladder",
    "prostate gland": "prostate_seminal_vesicles",
    "prostate": "prostate_seminal_vesicles",
    "uterus": "uterus_cervix",
    "left uterine appendage": "ovary_left",
    "right uterine appendage": "ovary_right",
    "scrotum": "male_external_genitalia",
    "penis": "penis",
    "vagina": "vagina",
    "left inguinal region": "superficial_inguinal_node_left",
    "right inguinal region": "superficial_inguinal_node_right",
    "sternum": "sternum",
    "sacrum": "sacrum_coccyx",
    "coccyx": "coccyx",
    "left axilla": "axillary_nodes_left",
    "right axilla": "axillary_nodes_right",
    "left breast": "breast_left",
    "right breast": "breast_right",
    "left chest wall": "chest_wall_left",
    "right chest wall": "chest_wall_right",
    "left internal mammary region": "internal_mammary_node_left",
    "right internal mammary region": "internal_mammary_node_right",
}

# Name patterns: (regular expression on the normalised name, function of the match -> site id).
PATTERNS: list[tuple[re.Pattern[str], Any]] = [
    (re.compile(r"liver s([1-8])"), lambda m: "liver" if m[1] == "4" else f"liver_segment_{m[1]}"),
    (re.compile(r"liver segment ([1-8])([ab]?)"), lambda m: "liver" if m[1] + m[2] == "4" else f"liver_segment_{m[1]}{m[2]}"),
    (re.compile(r"rib ([lr])(\d{1,2})"), lambda m: f"rib_{int(m[2])}_{'left' if m[1] == 'l' else 'right'}"),
    (re.compile(r"(left|right) rib (\d{1,2})"), lambda m: f"rib_{int(m[2])}_{m[1]}"),
    (re.compile(r"vertebra ([ctl])(\d{1,2})"), lambda m: f"vertebra_{m[1]}{int(m[2])}"),
    (re.compile(r"mediastinum (\d{1,2})([rlap]?)"), lambda m: _mediastinal_station(m[1], m[2])),
    (re.compile(r"station (\d{1,2})([rlap]?)"), lambda m: _mediastinal_station(m[1], m[2])),
    (re.compile(r"(?:left |right )?(upper|lower) back subcutaneous tissue"), lambda m: f"{m[1]}_back_subcutaneous_tissue"),
    (re.compile(r"(left|right) upper back muscles?"), lambda m: f"thoracic_erector_spinae_{m[1]}"),
    (re.compile(r"(left|right) (?:lower back|lumbar) muscles?"), lambda m: f"paraspinal_lumbar_muscle_{m[1]}"),
]


class HclalImportError(ValueError):
    """A published vocabulary file is missing, unreadable or not of the expected structure."""


@dataclass
class ImportedName:
    """One name of the published library and the site id it maps onto."""

    name: str
    level: str
    parent: str | None
    description: str | None
    site_id: str | None
    match: str


@dataclass
class HclalImport:
    """Result of mapping a published library and its descriptions onto a vocabulary."""

    vocabulary_id: str
    vocabulary_hash: str
    entries: list[ImportedName] = field(default_factory=list)
    descriptions_without_entry: list[str] = field(default_factory=list)

    @property
    def unmatched_count(self) -> int:
        """Number of library names that map onto no site."""
        return sum(1 for entry in self.entries if entry.site_id is None)

    def mapping(self) -> dict[str, str]:
        """Return ``{published name: site id}`` for every matched name."""
        return {entry.name: entry.site_id for entry in self.entries if entry.site_id is not None}

    def summary(self) -> str:
        """Return one line with the counts of matched and unmatched names."""
        total = len(self.entries)
        kinds: dict[str, int] = {}
        for entry in self.entries:
            kinds[entry.match] = kinds.get(entry.match, 0) + 1
        detail = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
        return f"{total} names: {total - self.unmatched_count} matched, {self.unmatched_count} unmatched ({detail})"

    def unmatched_lines(self) -> list[str]:
        """Return one line per unmatched name and per name without a description."""
        lines = [
            f"unmatched {entry.level} name {entry.name!r} (under {entry.parent!r})"
            for entry in self.entries
            if entry.site_id is None
        ]
        lines += [
            f"no description for {entry.level} name {entry.name!r}"
            for entry in self.entries
            if entry.description is None
        ]
        return lines

    def as_dict(self) -> dict[str, Any]:
        """Return the result as JSON-serialisable data."""
        return {
            "vocabulary_id": self.vocabulary_id,
            "vocabulary_hash": self.vocabulary_hash,
            "mapping": self.mapping(),
            "unmatched": [entry.name for entry in self.entries if entry.site_id is None],
            "entries": [asdict(entry) for entry in self.entries],
            "descriptions_without_entry": self.descriptions_without_entry,
        }


def import_hclal_files(library_path: Path, descriptions_path: Path, vocabulary: Vocabulary) -> HclalImport:
    """Read the two published JSON files and map their names onto ``vocabulary``.

    Raises
    ------
    HclalImportError
        If a file cannot be read or does not have the expected structure.
    """
    library = _read_json(library_path, "library")
    descriptions = _read_json(descriptions_path, "descriptions")
    return map_hclal_names(library, descriptions, vocabulary)


def map_hclal_names(library: Any, descriptions: Any, vocabulary: Vocabulary) -> HclalImport:
    """Map the names of already parsed library and descriptions data onto ``vocabulary``."""
    if not isinstance(descriptions, Mapping) or not all(
        isinstance(value, str) for value in descriptions.values()
    ):
        raise HclalImportError("descriptions must be a JSON object mapping names to sentences")

    matcher = _Matcher(vocabulary)
    result = HclalImport(vocabulary.vocabulary_id, vocabulary.vocabulary_hash)
    for coarse_name, fine_names in _coarse_entries(library):
        result.entries.append(_entry(coarse_name, "coarse", None, descriptions, matcher))
        for fine_name in fine_names:
            result.entries.append(_entry(fine_name, "fine", coarse_name, descriptions, matcher))

    named = {entry.name for entry in result.entries}
    result.descriptions_without_entry = sorted(name for name in descriptions if name not in named)
    return result


def normalise_name(name: str) -> str:
    """Lower-case ``name``, drop punctuation and unify British and American spellings."""
    words = re.sub(r"[^a-z0-9]+", " ", name.lower()).split()
    words = [SPELLING_VARIANTS.get(word, word) for word in words]
    if words and words[0] == "the":
        words = words[1:]
    return " ".join(words)


def _entry(
    name: str, level: str, parent: str | None, descriptions: Mapping[str, str], matcher: _Matcher
) -> ImportedName:
    site, match = matcher.match(name)
    return ImportedName(
        name=name,
        level=level,
        parent=parent,
        description=descriptions.get(name),
        site_id=site.id if site else None,
        match=match,
    )


def _coarse_entries(library: Any) -> list[tuple[str, list[str]]]:
    """Return ``(coarse name, fine names)`` pairs from either library layout."""
    if not isinstance(library, Mapping) or not library:
        raise HclalImportError("the library must be a non-empty JSON object of coarse names")

    def is_fine_block(value: Any) -> bool:
        if isinstance(value, list):
            return all(isinstance(item, str) for item in value)
        return isinstance(value, Mapping) and all(isinstance(item, str) for item in value.values())

    if all(is_fine_block(value) for value in library.values()):
        blocks: Iterable[tuple[str, Any]] = library.items()
    elif all(isinstance(value, Mapping) and all(is_fine_block(v) for v in value.values()) for value in library.values()):
        blocks = [(coarse, fines) for region in library.values() for coarse, fines in region.items()]
    else:
        raise HclalImportError(
            "the library must map coarse names to lists of fine names (optionally grouped by region)"
        )
    return [
        (coarse, list(fines.values()) if isinstance(fines, Mapping) else list(fines))
        for coarse, fines in blocks
    ]


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HclalImportError(f"{what} file {path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HclalImportError(f"{what} file {path} is not readable JSON: {exc}") from None


def _mediastinal_station(number: str, suffix: str) -> str | None:
    station = int(number)
    if station in (1, 2, 4) and suffix in ("r", "l"):
        return f"mediastinal_station_{station}{suffix}"
    if station == 3 and suffix in ("a", "p"):
        return f"mediastinal_station_3{suffix}"
    if station in (5, 6, 7, 8) and not suffix:
        return f"mediastinal_station_{station}"
    if station == 9:
        return f"mediastinal_station_9{suffix}" if suffix in ("r", "l") else "mediastinal_nodes_inferior"
    if 10 <= station <= 14 and suffix in ("r", "l"):
        return f"hilar_station_{min(station, 13)}{suffix}"
    return None


class _Matcher:
    """Name matcher over one vocabulary; fine sites win over coarse sites on equal names."""

    def __init__(self, vocabulary: Vocabulary) -> None:
        self.vocabulary = vocabulary
        self.exact: dict[str, Site] = {}
        self.words: dict[str, list[Site]] = {}
        for site in [*vocabulary.fine_sites, *vocabulary.coarse_sites]:
            for text in (site.name, site.id.replace("_", " ")):
                key = normalise_name(text)
                self.exact.setdefault(key, site)
                bag = " ".join(sorted(key.split()))
                if site not in self.words.setdefault(bag, []):
                    self.words[bag].append(site)

    def match(self, name: str) -> tuple[Site | None, str]:
        key = normalise_name(name)
        target = SYNONYMS.get(key)
        if target is None:
            for pattern, build in PATTERNS:
                found = pattern.fullmatch(key)
                if found:
                    target = build(found)
                    break
        if target is not None and target in self.vocabulary:
            return self.vocabulary.site(target), "synonym"
        if key in self.exact:
            return self.exact[key], "exact"
        candidates = self.words.get(" ".join(sorted(key.split())), [])
        if len(candidates) == 1:
            return candidates[0], "word order"
        return None, "unmatched"
