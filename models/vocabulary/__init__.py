"""Coded anatomical vocabulary: body regions, coarse sites and fine (leaf) sites.

The data live in ``sites.json`` beside this module: a list of body regions, each holding
coarse sites, each holding its fine sites. Every site has a stable snake_case id, a display
name, a one-sentence description that the text encoders use as the prompt, a laterality
and a SNOMED CT code (scheme ``SCT``) taken from the DICOM code tables that pydicom ships.
Where SNOMED CT has no pre-coordinated concept for a site, the site carries the code of its
parent structure plus a topographic modifier from CID 2 (Anatomic Modifier). Its laterality
maps to CID 244 (Laterality). TID 1500 finding sites are post-coordinated the same way.

Examples
--------
>>> from models.vocabulary import default_vocabulary
>>> vocabulary = default_vocabulary()
>>> vocabulary.site("liver_segment_4a").code.meaning
'Couinaud hepatic segment IV'
>>> vocabulary.parent("liver_segment_4a").id
'liver'
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

DEFAULT_VOCABULARY_PATH = Path(__file__).with_name("sites.json")

LATERALITIES = ("left", "right", "bilateral", "none")
LEVELS = ("coarse", "fine")

Laterality = Literal["left", "right", "bilateral", "none"]
Level = Literal["coarse", "fine"]


class VocabularyError(ValueError):
    """The vocabulary file is malformed."""


class UnknownSiteError(KeyError):
    """A site id is not in the vocabulary."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown site"


@dataclass(frozen=True)
class Code:
    """A coded concept: code value, coding scheme designator and code meaning (PS3.3 8.8)."""

    value: str
    scheme: str
    meaning: str

    def as_coded_concept(self) -> Any:
        """Return the code as a ``highdicom.sr.CodedConcept``."""
        from highdicom.sr import CodedConcept

        return CodedConcept(value=self.value, scheme_designator=self.scheme, meaning=self.meaning)

    def as_dict(self) -> dict[str, str]:
        """Return the code as the ``{"value", "scheme", "meaning"}`` mapping of the data file."""
        return {"value": self.value, "scheme": self.scheme, "meaning": self.meaning}


# CID 244 (Laterality), SNOMED CT codes as pydicom's code tables spell them.
LATERALITY_CODES: dict[str, Code] = {
    "right": Code("24028007", "SCT", "Right"),
    "left": Code("7771000", "SCT", "Left"),
    "bilateral": Code("51440002", "SCT", "Bilateral"),
}


@dataclass(frozen=True)
class Site:
    """One anatomical site of the vocabulary.

    Attributes
    ----------
    id
        Stable snake_case identifier, for example ``liver_segment_4a``.
    name
        Display name.
    description
        One sentence saying where the site lies; the text prompt of the CLIP models.
    laterality
        ``left``, ``right``, ``bilateral`` or ``none``.
    region
        Id of the body region (``head``, ``neck``, ``chest``, ``abdomen``, ``pelvis``,
        ``axial_skeleton``, ``upper_limb``, ``lower_limb``, or ``outside``).
    level
        ``coarse`` or ``fine``.
    parent
        Id of the coarse site for fine sites, ``None`` for coarse sites.
    code
        SNOMED CT code of the site or of its parent structure.
    modifier
        Topographic modifier (CID 2) that narrows ``code``, or ``None``.
    """

    id: str
    name: str
    description: str
    laterality: Laterality
    region: str
    level: Level
    parent: str | None
    code: Code
    modifier: Code | None = None

    @property
    def laterality_code(self) -> Code | None:
        """The CID 244 code of the laterality, ``None`` for sites without one."""
        return LATERALITY_CODES.get(self.laterality)


@dataclass(frozen=True)
class Region:
    """A body region: the top level of the hierarchy."""

    id: str
    name: str
    coarse_ids: tuple[str, ...]


@dataclass(frozen=True)
class Vocabulary:
    """The site hierarchy: regions, then coarse sites, then fine (leaf) sites.

    Build it with :func:`load_vocabulary` or :func:`default_vocabulary`. The order of
    ``coarse_sites`` and ``fine_sites`` is the order of the data file and is stable, so an
    index into either list can label a model output.
    """

    vocabulary_id: str
    version: str
    vocabulary_hash: str
    regions: tuple[Region, ...]
    coarse_sites: tuple[Site, ...]
    fine_sites: tuple[Site, ...]
    _by_id: Mapping[str, Site] = field(repr=False, compare=False)
    _children: Mapping[str, tuple[Site, ...]] = field(repr=False, compare=False)

    def __contains__(self, site_id: object) -> bool:
        return site_id in self._by_id

    def __iter__(self) -> Iterator[Site]:
        """Iterate over every site: each coarse site followed by its fine sites."""
        for coarse in self.coarse_sites:
            yield coarse
            yield from self._children[coarse.id]

    def __len__(self) -> int:
        return len(self._by_id)

    def site(self, site_id: str) -> Site:
        """Return the coarse or fine site with id ``site_id``.

        Raises
        ------
        UnknownSiteError
            If no site has this id.
        """
        try:
            return self._by_id[site_id]
        except KeyError:
            raise UnknownSiteError(
                f"site {site_id!r} is not in vocabulary {self.vocabulary_id} {self.version}; "
                "run 'hclal vocab show' to list the site ids"
            ) from None

    def children(self, coarse_id: str) -> tuple[Site, ...]:
        """Return the fine sites under coarse site ``coarse_id``, in file order."""
        site = self.site(coarse_id)
        if site.level != "coarse":
            raise ValueError(f"site {coarse_id!r} is a fine site and has no children")
        return self._children[coarse_id]

    def parent(self, fine_id: str) -> Site:
        """Return the coarse site that contains fine site ``fine_id``."""
        site = self.site(fine_id)
        if site.parent is None:
            raise ValueError(f"site {fine_id!r} is a coarse site and has no parent")
        return self._by_id[site.parent]

    def region_of(self, site_id: str) -> str:
        """Return the region id of a coarse or fine site."""
        return self.site(site_id).region

    def coarse_index(self, coarse_id: str) -> int:
        """Return the position of a coarse site in ``coarse_sites``."""
        return self._position(coarse_id, "coarse", self._coarse_positions)

    def fine_index(self, fine_id: str) -> int:
        """Return the position of a fine site in ``fine_sites``."""
        return self._position(fine_id, "fine", self._fine_positions)

    @cached_property
    def _coarse_positions(self) -> dict[str, int]:
        return {site.id: position for position, site in enumerate(self.coarse_sites)}

    @cached_property
    def _fine_positions(self) -> dict[str, int]:
        return {site.id: position for position, site in enumerate(self.fine_sites)}

    def _position(self, site_id: str, level: Level, positions: dict[str, int]) -> int:
        if site_id not in positions:
            self.site(site_id)  # raises UnknownSiteError for ids of no level
            raise ValueError(f"site {site_id!r} is not a {level} site")
        return positions[site_id]


def canonical_bytes(data: Mapping[str, Any]) -> bytes:
    """Serialise vocabulary data canonically: sorted keys, no whitespace, UTF-8."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def load_vocabulary(path: Path | str | None = None) -> Vocabulary:
    """Read a vocabulary file (by default the project's ``sites.json``).

    Raises
    ------
    VocabularyError
        If the file is not valid JSON or a site lacks a required field. Semantic checks
        (codes, uniqueness, laterality) are in :mod:`models.vocabulary.check`.
    """
    path = Path(path) if path is not None else DEFAULT_VOCABULARY_PATH
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise VocabularyError(f"cannot read vocabulary {path}: {exc}") from exc
    return vocabulary_from_data(data, source=str(path))


def vocabulary_from_data(data: Mapping[str, Any], source: str = "<data>") -> Vocabulary:
    """Build a :class:`Vocabulary` from the parsed data of a vocabulary file."""
    try:
        vocabulary_id = str(data["vocabulary_id"])
        version = str(data["version"])
        raw_regions = data["regions"]
    except (KeyError, TypeError) as exc:
        raise VocabularyError(f"{source}: missing top-level field {exc}") from exc

    regions: list[Region] = []
    coarse_sites: list[Site] = []
    fine_sites: list[Site] = []
    children: dict[str, tuple[Site, ...]] = {}
    for raw_region in raw_regions:
        region_id = _field(raw_region, "id", source)
        coarse_ids = []
        for raw_coarse in _field(raw_region, "coarse", source):
            coarse = _site(raw_coarse, region_id, "coarse", None, source)
            fines = tuple(
                _site(raw_fine, region_id, "fine", coarse.id, source)
                for raw_fine in _field(raw_coarse, "fine", source)
            )
            coarse_sites.append(coarse)
            fine_sites.extend(fines)
            children[coarse.id] = fines
            coarse_ids.append(coarse.id)
        regions.append(Region(region_id, _field(raw_region, "name", source), tuple(coarse_ids)))

    by_id: dict[str, Site] = {}
    for site in [*coarse_sites, *fine_sites]:
        if site.id in by_id:
            raise VocabularyError(f"{source}: site id {site.id!r} appears twice")
        by_id[site.id] = site

    return Vocabulary(
        vocabulary_id=vocabulary_id,
        version=version,
        vocabulary_hash=hashlib.sha256(canonical_bytes(data)).hexdigest(),
        regions=tuple(regions),
        coarse_sites=tuple(coarse_sites),
        fine_sites=tuple(fine_sites),
        _by_id=by_id,
        _children=children,
    )


@lru_cache(maxsize=1)
def default_vocabulary() -> Vocabulary:
    """Return the project's vocabulary, read once per process."""
    return load_vocabulary(DEFAULT_VOCABULARY_PATH)


def _field(raw: Mapping[str, Any], name: str, source: str) -> Any:
    try:
        return raw[name]
    except (KeyError, TypeError):
        where = raw.get("id", "?") if isinstance(raw, Mapping) else "?"
        raise VocabularyError(f"{source}: entry {where!r} is missing the field {name!r}") from None


def _code(raw: Any, what: str, source: str) -> Code:
    if not isinstance(raw, Mapping) or not {"value", "scheme", "meaning"} <= raw.keys():
        raise VocabularyError(f"{source}: {what} must have value, scheme and meaning")
    return Code(str(raw["value"]), str(raw["scheme"]), str(raw["meaning"]))


def _site(raw: Mapping[str, Any], region: str, level: Level, parent: str | None, source: str) -> Site:
    site_id = _field(raw, "id", source)
    laterality = _field(raw, "laterality", source)
    if laterality not in LATERALITIES:
        raise VocabularyError(
            f"{source}: site {site_id!r} has laterality {laterality!r}; expected one of {LATERALITIES}"
        )
    modifier = raw.get("modifier")
    return Site(
        id=site_id,
        name=_field(raw, "name", source),
        description=_field(raw, "description", source),
        laterality=laterality,
        region=region,
        level=level,
        parent=parent,
        code=_code(_field(raw, "code", source), f"code of {site_id!r}", source),
        modifier=None if modifier is None else _code(modifier, f"modifier of {site_id!r}", source),
    )


__all__: Sequence[str] = [
    "Code",
    "DEFAULT_VOCABULARY_PATH",
    "LATERALITY_CODES",
    "Region",
    "Site",
    "UnknownSiteError",
    "Vocabulary",
    "VocabularyError",
    "default_vocabulary",
    "load_vocabulary",
    "vocabulary_from_data",
]
