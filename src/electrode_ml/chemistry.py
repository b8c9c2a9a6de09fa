"""Formula parsing and the stoichiometric quantities that follow from a formula alone."""

from __future__ import annotations

import math
import re
from functools import lru_cache

import numpy as np
from pymatgen.core import Composition, Element

from electrode_ml.errors import InputError
from electrode_ml.schema import ION_CHARGE

N_ELEMENTS = 118
FARADAY = 96485.33212  # C/mol
FARADAY_MAH = FARADAY / 3.6  # C/mol -> mAh/mol
# What a formula is written with: element symbols, plain decimal counts, brackets and spaces.
# pymatgen reads more: it drops '@' (for metallofullerenes such as Y3N@C80) and reads 1e2 as 100,
# so a typo such as LiFe@PO4 or Li1e2FePO4 would become another material without a word.
FORMULA_TOKEN = re.compile(r"\s*(?:[A-Z][a-z]*|\d+\.?\d*|\.\d+|[()\[\]{}])")
# pymatgen's atomic masses (amu) by atomic number - 1, as plain floats: its Composition.weight
# multiplies and adds unit-carrying floats, each checked for its unit, and was 80 % of parsing a
# formula (profiled on 100,000 candidates), for the same number to the last bit.
ATOMIC_MASS = tuple(float(Element.from_Z(z).atomic_mass) for z in range(1, N_ELEMENTS + 1))


@lru_cache(maxsize=65536)
def parse_formula(formula: str) -> Composition:
    """Parse with pymatgen, refusing what pymatgen tolerates but chemistry does not.

    pymatgen turns an unknown symbol such as ``Xx`` into a dummy species, so real elements
    are checked explicitly. Zero amounts (``Na0VO2``, the empty ion site of a charged
    electrode) are legal and simply vanish from the composition.
    """
    if not isinstance(formula, str) or not formula.strip():
        raise InputError("empty formula")
    position = 0
    while match := FORMULA_TOKEN.match(formula, position):
        position = match.end()
    unread = formula[position:].lstrip()
    if unread:
        at = len(formula) - len(unread) + 1
        raise InputError(f"malformed formula {formula!r}: {unread[0]!r} at character {at} "
                         "is not an element symbol, a count or a bracket")
    unmatched = _unmatched_bracket(formula)
    if unmatched is not None:
        raise InputError(f"malformed formula {formula!r}: the {formula[unmatched]!r} at character "
                         f"{unmatched + 1} has no partner")
    try:
        composition = Composition(formula)
    except Exception as exc:  # pymatgen raises ValueError, KeyError, ... for malformed strings
        raise InputError(f"malformed formula {formula!r} ({exc})") from None
    for species, amount in composition.items():
        if not isinstance(species, Element):
            # pymatgen's placeholder species print as 'Xx0+': the symbol is what the user wrote
            raise InputError(f"unknown element {getattr(species, 'symbol', str(species))!r} in formula {formula!r}")
        if not math.isfinite(amount):
            raise InputError(f"amount of {species} in formula {formula!r} is not a finite number")
    if not math.isfinite(composition.num_atoms) or not math.isfinite(molar_mass(composition)):
        raise InputError(f"formula {formula!r} has an atom count too large to be a material")
    if composition.num_atoms <= 0:
        raise InputError(f"formula {formula!r} has no atoms")
    return composition


def molar_mass(composition: Composition) -> float:
    """g/mol: pymatgen's ``Composition.weight`` without its units, summed in the same order."""
    total = 0.0
    for element, amount in composition.items():
        total += amount * ATOMIC_MASS[element.Z - 1]
    return total


def _unmatched_bracket(formula: str) -> int | None:
    """The index of the first bracket without its partner, or None where every one pairs up."""
    partners, open_at = {")": "(", "]": "[", "}": "{"}, []
    for index, character in enumerate(formula):
        if character in "([{":
            open_at.append(index)
        elif character in partners:
            if not open_at or formula[open_at[-1]] != partners[character]:
                return index
            open_at.pop()
    return open_at[0] if open_at else None


def element_fractions(formula: str) -> np.ndarray:
    """Atomic fractions over the 118 elements, indexed by atomic number - 1 (the paper's 'manual coding')."""
    vector = np.zeros(N_ELEMENTS)
    for index, fraction in fraction_items(formula):
        vector[index] = fraction
    return vector


@lru_cache(maxsize=65536)
def fraction_items(formula: str) -> tuple[tuple[int, float], ...]:
    """(atomic number - 1, atomic fraction) of each element of a formula. The features and the
    composition flag both read a formula's fractions: cached, the validation split's 776 formulas
    take 0.33 ms instead of 0.91 the second time. The pairs, not the 118-wide vector, are kept: a
    few per formula."""
    return tuple((element.Z - 1, fraction) for element, fraction in parse_formula(formula).fractional_composition.items())


def ion_count(formula: str, working_ion: str) -> float:
    """Working-ion atoms per formula unit as written (the snapshot normalises to the framework)."""
    return float(parse_formula(formula)[working_ion])


def per_framework_unit(formula: str, working_ion: str) -> tuple[float, Composition]:
    """(working-ion atoms per reduced framework unit, the reduced framework) of one end member.

    MP's voltage pairs give reduced formulas (``Li10Ti3Mn5O16``, ``Li4(CuO2)3``); the snapshot's
    formulas count the ion per framework unit, so both are compared in that unit.
    """
    ion, framework, units = framework_units(formula, working_ion)
    return ion / units, framework


def _ion_and_framework(formula: str, working_ion: str) -> tuple[float, dict[str, float]]:
    """(working-ion atoms, the framework's element amounts) of a formula as written."""
    amounts = parse_formula(formula).get_el_amt_dict()
    ion = amounts.pop(working_ion, 0.0)
    if not amounts:
        raise InputError(f"formula {formula!r} holds no framework besides the working ion {working_ion}")
    return ion, amounts


def framework_units(formula: str, working_ion: str) -> tuple[float, Composition, float]:
    """(working-ion atoms, the reduced framework, how many framework units) of a formula as written."""
    ion, amounts = _ion_and_framework(formula, working_ion)
    framework, units = Composition.from_dict(amounts).get_reduced_composition_and_factor()
    return ion, framework, units


def one_framework_unit(formula_charge: str, formula_discharge: str, working_ion: str) -> tuple[str, str] | None:
    """Both ends rewritten per one reduced framework unit where they are written as several of them
    (``Li0Fe2P2O8 -> Li2Fe2P2O8`` as ``Li0Fe1P1O4 -> Li1Fe1P1O4``), else None; the ends must share
    one framework (:func:`insertion_problem`).

    Every snapshot electrode is written per one unit, and the redox features count the atoms per
    unit (``log_framework_atoms``): model1_phys's voltage of olivine came out 3.307, 3.336 and 3.384 V
    written per 1, 2 and 4 units. The unit is pymatgen's: the greatest common divisor of whole
    amounts, none for fractional ones (``get_reduced_composition_and_factor``), taken without its
    reduction's cost.
    """
    _, amounts = _ion_and_framework(formula_discharge, working_ion)
    whole = [round(amount) for amount in amounts.values()]
    if any(abs(amount - count) >= Composition.amount_tolerance for amount, count in zip(amounts.values(), whole)):
        return None
    units = math.gcd(*whole)
    if units <= 1:
        return None

    def per_unit(formula: str) -> str:
        ion, framework = _ion_and_framework(formula, working_ion)
        return f"{working_ion}{ion / units:.10g}" + "".join(f"{element}{amount / units:.10g}"
                                                            for element, amount in framework.items())

    return per_unit(formula_charge), per_unit(formula_discharge)


def insertion_problem(formula_charge: str, formula_discharge: str, working_ion: str) -> tuple[str, str] | None:
    """(the field at fault, why) when two parsable formulas are no insertion electrode of this ion.

    Both ends must share one host framework, written as the same number of framework units (the
    physics counts ions, mass and atoms as written), and the discharged end must hold more of the
    ion: every electrode of the snapshot does. Anything else (swapped ends, the ion in neither
    formula, two hosts) would still get numbers from the networks, numbers of nothing.

    Ends written with the same framework amounts share host and units without reducing them:
    pymatgen's reduction took 26 of the 31 s (profiled) that checking 200,000 candidates took.
    """
    ends = {}
    for name, formula in (("formula_charge", formula_charge), ("formula_discharge", formula_discharge)):
        try:
            ends[name] = _ion_and_framework(formula, working_ion)
        except InputError as exc:
            return name, str(exc)
    (charged, charged_amounts), (discharged, discharged_amounts) = ends["formula_charge"], ends["formula_discharge"]
    if charged_amounts != discharged_amounts:
        _, charged_host, charged_units = framework_units(formula_charge, working_ion)
        _, discharged_host, discharged_units = framework_units(formula_discharge, working_ion)
        if charged_host != discharged_host:
            return "formula_discharge", (f"its host {discharged_host.reduced_formula} is not the charged formula's "
                                         f"{charged_host.reduced_formula}: an insertion electrode keeps its framework")
        if not math.isclose(charged_units, discharged_units, rel_tol=1e-9):
            host = discharged_host.reduced_formula
            return "formula_discharge", (f"holds {discharged_units:g} {host} unit(s), formula_charge "
                                         f"{charged_units:g}: write both ends per one framework unit, as the "
                                         "snapshot does")
    if discharged <= charged:
        _, host, units = framework_units(formula_discharge, working_ion)
        return "formula_discharge", (f"holds no more {working_ion} per {host.reduced_formula} than "
                                     f"formula_charge ({discharged / units:g} against {charged / units:g}): "
                                     "swapped ends, or the wrong ion?")
    return None


def capacity_mah_g(gained, charge, discharged_molar_mass):
    """C = n z F / (3.6 M) in mAh/g, for numbers or arrays: the one place both the physics models and
    the K substitution compute it, in one order of operations, so that their values agree to the bit."""
    return gained * charge * FARADAY_MAH / discharged_molar_mass


def stoichiometric_capacity(formula_charge: str, formula_discharge: str, working_ion: str) -> float:
    """Gravimetric capacity in mAh/g (:func:`capacity_mah_g`), M the molar mass of the discharged formula."""
    gained = ion_count(formula_discharge, working_ion) - ion_count(formula_charge, working_ion)
    return capacity_mah_g(gained, ION_CHARGE[working_ion], molar_mass(parse_formula(formula_discharge)))
