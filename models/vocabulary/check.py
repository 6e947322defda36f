"""Consistency checks of a vocabulary against itself and against pydicom's code tables.

A code is accepted only when pydicom's DICOM code tables (PS3.16, as shipped in
``pydicom.sr``) contain the same code value under the same coding scheme with the same
code meaning. The vocabulary therefore cannot carry an invented or misspelt SNOMED CT
concept.
Modifiers must be members of CID 2 (Anatomic Modifier).
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

from models.vocabulary import LATERALITY_CODES, Code, Site, Vocabulary

SITE_ID_PATTERN = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
ANATOMIC_MODIFIER_CID = 2


@lru_cache(maxsize=1)
def _dicom_code_meanings() -> dict[tuple[str, str], frozenset[str]]:
    """Map ``(scheme, value)`` to every code meaning pydicom's tables give it."""
    # pydicom exposes the tables publicly only by keyword (pydicom.sr.codedict.codes); the
    # lookup by code value needs the module the keywords are generated from.
    from pydicom.sr._concepts_dict import concepts

    meanings: dict[tuple[str, str], set[str]] = {}
    for scheme, by_keyword in concepts.items():
        for entries in by_keyword.values():
            for value, (meaning, _cids) in entries.items():
                meanings.setdefault((scheme, value), set()).add(meaning)
    return {key: frozenset(values) for key, values in meanings.items()}


@lru_cache(maxsize=1)
def _anatomic_modifier_codes() -> frozenset[tuple[str, str]]:
    """Return the ``(scheme, value)`` pairs of CID 2 (Anatomic Modifier)."""
    from pydicom.sr._cid_dict import cid_concepts
    from pydicom.sr._concepts_dict import concepts

    members = set()
    for scheme, keywords in cid_concepts[ANATOMIC_MODIFIER_CID].items():
        for keyword in keywords:
            members.update((scheme, value) for value in concepts[scheme][keyword])
    return frozenset(members)


def code_problem(code: Code) -> str | None:
    """Return why ``code`` is not in pydicom's code tables as written, or ``None``."""
    known = _dicom_code_meanings().get((code.scheme, code.value))
    if known is None:
        return f"code {code.scheme} {code.value} is not in pydicom's code tables"
    if code.meaning not in known:
        return (
            f"code {code.scheme} {code.value} has meaning {code.meaning!r}; "
            f"pydicom's tables give {sorted(known)}"
        )
    return None


def check_vocabulary(vocabulary: Vocabulary) -> list[str]:
    """Return every problem found in ``vocabulary``; an empty list means it passed.

    Checks site ids, names, descriptions, the tree shape, laterality of fine sites against
    their coarse site, codes and modifiers against pydicom's tables, and that no two
    sites of one level share a description (the text prompts must differ).
    """
    problems: list[str] = []
    for laterality, laterality_code in LATERALITY_CODES.items():
        problem = code_problem(laterality_code)
        if problem:
            problems.append(f"laterality {laterality}: {problem}")
    for site in vocabulary:
        problems.extend(_site_problems(site))
    problems.extend(_tree_problems(vocabulary))
    problems.extend(_duplicate_text_problems(vocabulary.coarse_sites, "coarse"))
    problems.extend(_duplicate_text_problems(vocabulary.fine_sites, "fine"))
    return problems


def _site_problems(site: Site) -> list[str]:
    problems = []
    if not SITE_ID_PATTERN.fullmatch(site.id):
        problems.append(f"{site.id!r}: id must be snake_case ASCII (a-z, 0-9, single underscores)")
    if not site.name.strip():
        problems.append(f"{site.id}: name is empty")
    if not site.description.strip().endswith("."):
        problems.append(f"{site.id}: description must be one sentence ending with a full stop")

    problem = code_problem(site.code)
    if problem:
        problems.append(f"{site.id}: {problem}")
    if site.modifier is not None:
        problem = code_problem(site.modifier)
        if problem:
            problems.append(f"{site.id}: modifier {problem}")
        elif (site.modifier.scheme, site.modifier.value) not in _anatomic_modifier_codes():
            problems.append(f"{site.id}: modifier {site.modifier.meaning!r} is not in CID 2 (Anatomic Modifier)")
    return problems


def _tree_problems(vocabulary: Vocabulary) -> list[str]:
    problems = []
    if not vocabulary.regions:
        problems.append("the vocabulary has no regions")
    for region in vocabulary.regions:
        if not region.coarse_ids:
            problems.append(f"region {region.id}: has no coarse sites")
    for coarse in vocabulary.coarse_sites:
        children = vocabulary.children(coarse.id)
        if not children:
            problems.append(f"{coarse.id}: coarse site has no fine sites")
        for fine in children:
            if coarse.laterality in ("left", "right") and fine.laterality != coarse.laterality:
                problems.append(
                    f"{fine.id}: laterality {fine.laterality!r} differs from its coarse site "
                    f"{coarse.id} ({coarse.laterality!r})"
                )
    return problems


def _duplicate_text_problems(sites: tuple[Site, ...], level: str) -> list[str]:
    problems = []
    for attribute in ("name", "description"):
        counts = Counter(getattr(site, attribute) for site in sites)
        for text, count in counts.items():
            if count > 1:
                ids = [site.id for site in sites if getattr(site, attribute) == text]
                problems.append(f"{level} sites {ids} share the {attribute} {text!r}")
    return problems
