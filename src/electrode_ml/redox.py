"""Oxidation-state chemistry of an insertion electrode, from its two formulas alone.

An insertion voltage is set mostly by which cation the working ion's electrons reduce, from which
oxidation state to which, and among which anions (the inductive effect of PO4 or F). Element
fractions hold that only implicitly, and a network given only them stays at model1's ~0.41 V.
These features state it, by rules of thumb a chemist would apply, without DFT:

* anions and spectator cations take fixed oxidation states (O -2, halides -1, sulfide -2 without
  oxygen; P +5, S +6, Si +4 ... inside oxo-anions; alkali +1, Mg/Ca/Zn +2, Al/Y/La +3; the
  working ion its own charge), stepping an oxo-anion former down (S +6 -> +4, as in sulfites)
  where the oxygen could not balance it;
* the charge left over is spread over the other (redox-capable) cations one oxidation step at a
  time: first the early transition metals and tin up to their group state (Ti +4, Nb +5, Mo +6 ...:
  in a solid their d0 states are stable, and their couples lie below the late metals'), then
  always the step with the lowest ionisation energy: the charged material's states;
* the discharged material's states follow the same way from its smaller leftover charge, so the
  steps the working ion's electrons undo are the most expensive ones: the redox couple.

Every feature is a plain number per electrode (:data:`FEATURE_NAMES`, the same columns for any
input), finite for any valid composition.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import numpy as np
import pandas as pd
from pymatgen.core import Element

from electrode_ml.chemistry import parse_formula
from electrode_ml.schema import ION_CHARGE

HALIDES = {"F": -1, "Cl": -1, "Br": -1, "I": -1}
# Halogens that form oxo-anions (IO3, BrO3, ClO4) where there is oxygen for them.
HALATE_FORMERS = {"Cl": 7, "Br": 5, "I": 5}
# Anions of oxygen-free frameworks (sulfides, nitrides, phosphides, hydrides ...).
OXYGEN_FREE_ANIONS = {"S": -2, "Se": -2, "Te": -2, "N": -3, "P": -3, "As": -3, "C": -4, "Si": -4, "B": -3}
# Oxo-anion formers with oxygen (PO4, SO4, SiO4, BO3, CO3, NO3, AsO4, SeO4, GeO4, IO3), and the
# lower states each steps down to, in turn, when the oxygen cannot balance the higher one (SO3, P2S6,
# PO3, C2O4), ending at its own anion (S2- in an oxysulfide, N3- in an oxynitride, Cl- in an oxychloride).
OXO_FORMERS = {"P": 5, "S": 6, "Si": 4, "B": 3, "C": 4, "N": 5, "As": 5, "Se": 6, "Ge": 4, "Te": 6,
               **HALATE_FORMERS}
OXO_LOWER = {"S": (4, -2), "Se": (4, -2), "Te": (4, -2), "N": (3, -3), "P": (4, 3, -3), "As": (3, -3),
             "C": (3,), **{symbol: (-1,) for symbol in HALATE_FORMERS}}
# Without oxygen these still form complex anions with a chalcogen or a halide (PS4, SiS4, PF6, BF4).
COMPLEX_FORMERS = {"P", "As", "Si", "Ge", "B"}
SPECTATORS = {"Li": 1, "Na": 1, "K": 1, "Rb": 1, "Cs": 1, "Be": 2, "Mg": 2, "Ca": 2, "Sr": 2, "Ba": 2,
              "Zn": 2, "Cd": 2, "Al": 3, "Ga": 3, "In": 3, "Sc": 3, "Y": 3, "La": 3,
              **{symbol: 3 for symbol in ("Nd", "Gd", "Dy", "Ho", "Er", "Tm", "Lu", "Pm")}}
# Redox cations oxidised to their group state before any other cation takes a step: ordered by
# gas-phase ionisation energies, Ti +4 or Mo +6 cost more than Fe +3 or Ni +3, and FeTiO3 came out
# Fe3+ Ti3+, NiWO4 Ni3+ W5+, where a solid holds Fe2+ Ti4+ and Ni2+ W6+. Zr and Hf are fixed at +4
# so, and carry the electrons only in a host of no other redox cation (HfSe2).
EARLY_METALS = {"Ti": 4, "Zr": 4, "Hf": 4, "Nb": 5, "Ta": 5, "Mo": 6, "W": 6, "Sn": 4}
# Redox-capable cations with a column of their own; any other lands in the "other" columns.
REDOX_ELEMENTS = ("Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Nb", "Mo", "W", "Ru", "Ag", "Sn", "Sb",
                  "Bi", "Pb", "Ce", "Ta", "Re", "Tl", "Ge", "Te", "Pr", "Sm", "Eu", "Tb", "Yb", "U")
ANION_ELEMENTS = ("O", "F", "Cl", "Br", "I", "S", "Se", "Te", "N", "P", "As", "C", "Si", "B", "Ge", "H")
# No cation is oxidised beyond +8 (OsO4), nor beyond its own highest known state (pymatgen's
# max_oxidation_state: Cu +4, Au +5); a higher state means the rules do not fit the formula.
MAX_STATE = 8
# A couple's ionisation energy beyond an element's tabulated ones (never the cheapest step).
UNTABULATED_EV = 200.0
# A real couple spans a few steps; one spanning more is averaged in closed form (mean_step_cost).
MAX_LISTED_STEPS = 1000

SCALARS = (
    "redox_state_charged", "redox_state_discharged", "electrons_per_redox_cation",
    "redox_cations_per_framework_atom", "ions_gained_per_framework_atom", "ions_charged_per_framework_atom",
    "electrons_per_anion_charge", "log_framework_atoms", "no_redox_cation", "charge_unbalanced",
    "couple_ionisation_energy", "couple_state_from", "couple_state_to", "redox_electronegativity",
    "oxo_formers_per_oxygen",
)
FEATURE_NAMES: tuple[str, ...] = (
    SCALARS
    + tuple(f"anion_{element}_per_framework_atom" for element in ANION_ELEMENTS)
    + tuple(f"cation_share_{element}" for element in (*REDOX_ELEMENTS, "other"))
    + tuple(f"electron_share_{element}" for element in (*REDOX_ELEMENTS, "other"))
)


@lru_cache(maxsize=None)
def _ionisation_energies(symbol: str) -> tuple[float, ...]:
    """The tabulated ones, up to the first gap (the superheavy elements have none)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns where it has no data
        energies = list(Element(symbol).ionization_energies or ())
    tabulated = []
    for value in energies:
        if value is None or not math.isfinite(value):
            break
        tabulated.append(float(value))
    return tuple(tabulated)


def step_cost(symbol: str, state: float) -> float:
    """eV to oxidise ``symbol`` one step further from ``state`` (the next ionisation energy)."""
    energies = _ionisation_energies(symbol)
    step = int(math.floor(state + 1e-9))
    return energies[step] if step < len(energies) else UNTABULATED_EV + step


def mean_step_cost(symbol: str, first: int, stop: int) -> float:
    """Mean of :func:`step_cost` over the steps ``first`` .. ``stop - 1`` (``first`` >= 0).

    An absurd composition (a trace of cation taking a million ions' electrons) spans billions of
    steps, so beyond the tabulated energies the arithmetic series is summed in closed form: listed
    one by one, such a row took all of a 24 GB machine's memory.
    """
    if stop - first <= MAX_LISTED_STEPS:
        return float(np.mean([step_cost(symbol, step) for step in range(first, stop)]))
    energies = _ionisation_energies(symbol)
    tabulated = sum(energies[first:stop])
    untabulated_first = max(first, len(energies))
    count = stop - untabulated_first
    untabulated = count * UNTABULATED_EV + (untabulated_first + stop - 1) * count / 2
    return float((tabulated + untabulated) / (stop - first))


def oxidise(redox_cations: dict[str, float], charge: float) -> dict[str, float]:
    """Spread ``charge`` over the cations (symbol -> atoms): the :data:`EARLY_METALS` up to their
    group state, then the cheapest ionisation step first.

    Returns each element's mean oxidation state. A charge beyond what the tabulated steps cover
    keeps going at :data:`UNTABULATED_EV`, so the states always add up to the charge.
    """
    states = dict.fromkeys(redox_cations, 0.0)
    remaining = max(charge, 0.0)

    def order(name: str) -> tuple:
        # an early metal below its group state first, then the cheapest step
        return (states[name] >= EARLY_METALS.get(name, 0) - 1e-9, step_cost(name, states[name]), name)

    while remaining > 1e-9 and redox_cations:
        symbol = min(redox_cations, key=order)
        if step_cost(symbol, states[symbol]) >= UNTABULATED_EV:
            # past every tabulated step (absurd charges): the rest evenly, not one step at a time
            total = sum(redox_cations.values())
            return {name: state + remaining / total for name, state in states.items()}
        amount = redox_cations[symbol]
        room = (math.floor(states[symbol] + 1e-9) + 1 - states[symbol]) * amount
        taken = min(room, remaining)
        states[symbol] += taken / amount
        remaining -= taken
    return states


def charge_balance(amounts: dict[str, float], working_ion: str,
                   former_states: dict[str, int] | None = None) -> tuple[float, float, dict[str, float]]:
    """(anion charge, charge of the fixed cations, redox-capable cations) of one material.

    ``former_states`` gives the oxo/complex-anion formers' states (:func:`oxo_former_states`);
    by default they are decided on this material alone.
    """
    anion, fixed, formers, redox = _classify(amounts, working_ion)
    states = former_states if former_states is not None else oxo_former_states(amounts, working_ion)
    return anion, fixed + _former_charge(formers, states), redox


def oxo_former_states(amounts: dict[str, float], working_ion: str) -> dict[str, int]:
    """Each oxo/complex-anion former's state: its group state, stepped down the rungs of
    :data:`OXO_LOWER` while the oxygen leaves the redox cations with less than +1 on average (or,
    without redox cations, the fixed ones unbalanced).

    An electrode's two ends share one framework, so :func:`electrode_features` decides these once,
    on the discharged end (the one the +1 floor binds): decided per end, PS3 stepped P +5 -> +3
    only on discharge and so oxidised Fe while it took up lithium.
    """
    anion, fixed, formers, redox = _classify(amounts, working_ion)
    states = {symbol: OXO_FORMERS[symbol] for symbol in formers}
    needed = sum(redox.values())  # at least +1 per redox cation, or exact balance without any
    # every former's lower oxo-anion states first, and only then a former's own anion: stepped one
    # former at a time, Y1V3Se2ClO8's selenium went to Se2- before its chlorine moved
    for anion_rung in (False, True):
        for symbol in sorted(formers, key=lambda name: -formers[name]):
            for lower in OXO_LOWER.get(symbol, ()):
                if anion - fixed - _former_charge(formers, states) >= needed:
                    return states
                if (lower < 0) == anion_rung:
                    states[symbol] = lower
    return states


def _classify(amounts: dict[str, float], working_ion: str
              ) -> tuple[float, float, dict[str, float], dict[str, float]]:
    """(anion charge, fixed cations' charge, oxo/complex-anion formers, redox cations)."""
    has_oxygen = "O" in amounts
    has_halide = any(symbol in HALIDES for symbol in amounts)
    has_chalcogen = any(symbol in ("S", "Se", "Te") for symbol in amounts)
    anion, fixed, formers, redox = 0.0, 0.0, {}, {}
    amounts = dict(amounts)
    if not has_oxygen and "C" in amounts and "N" in amounts:  # cyanide, CN- (Prussian blue analogues)
        cyanide = min(amounts["C"], amounts["N"])
        anion += cyanide
        amounts = {symbol: amount - cyanide if symbol in ("C", "N") else amount for symbol, amount in amounts.items()}
        amounts = {symbol: amount for symbol, amount in amounts.items() if amount > 1e-9}
    for symbol, amount in amounts.items():
        if symbol == "O":
            anion += 2 * amount
        elif symbol in HALIDES:
            anion += -HALIDES[symbol] * amount
        elif symbol == working_ion:
            fixed += ION_CHARGE[working_ion] * amount
        elif symbol == "H":  # hydroxide or water +1, hydride -1
            if has_oxygen or has_halide:
                fixed += amount
            else:
                anion += amount
        elif symbol in OXO_FORMERS and (has_oxygen or (symbol in COMPLEX_FORMERS and (has_halide or has_chalcogen))):
            formers[symbol] = amount
        elif symbol in OXYGEN_FREE_ANIONS:
            anion += -OXYGEN_FREE_ANIONS[symbol] * amount
        elif symbol in SPECTATORS:
            fixed += SPECTATORS[symbol] * amount
        else:
            redox[symbol] = amount
    # A halogen is a halate former (IO3-, ClO4-) only where, as a halide, it would leave the redox
    # cations beyond their highest states (SmMoI4O15: Mo and Sm +17 with iodide), not wherever there
    # is oxygen enough: an oxychloride's oxygen is the metals' (PbBi3WO8Cl).
    halogens = {symbol: amount for symbol, amount in amounts.items() if symbol in HALATE_FORMERS}
    if halogens and redox and has_oxygen and amounts["O"] >= 3 * sum(halogens.values()):
        left = anion - fixed - _former_charge(formers, {})
        if left > sum(_max_state(symbol) * amount for symbol, amount in redox.items()) + 1e-6:
            anion -= sum(halogens.values())
            formers.update(halogens)
    return anion, fixed, formers, redox


def _former_charge(formers: dict[str, float], states: dict[str, int]) -> float:
    return sum(states.get(symbol, OXO_FORMERS[symbol]) * amount for symbol, amount in formers.items())


@lru_cache(maxsize=65536)
def electrode_features(formula_charge: str, formula_discharge: str, working_ion: str) -> tuple[float, ...]:
    """The :data:`FEATURE_NAMES` of one electrode, in that order."""
    charged = parse_formula(formula_charge).get_el_amt_dict()
    discharged = parse_formula(formula_discharge).get_el_amt_dict()
    z = ION_CHARGE[working_ion]
    gained = discharged.get(working_ion, 0.0) - charged.get(working_ion, 0.0)
    framework_atoms = sum(amount for symbol, amount in discharged.items() if symbol != working_ion)
    per_framework_atom = 1.0 / framework_atoms if framework_atoms > 0 else 0.0

    former_states = oxo_former_states(discharged, working_ion)
    anion, fixed_charged, redox = charge_balance(charged, working_ion, former_states)
    _, fixed_discharged, _ = charge_balance(discharged, working_ion, former_states)
    n_redox = sum(redox.values())
    left_charged, left_discharged = anion - fixed_charged, anion - fixed_discharged
    states_charged = oxidise(redox, left_charged)
    states_discharged = oxidise(redox, left_discharged)
    electrons = {symbol: (states_charged[symbol] - states_discharged[symbol]) * redox[symbol] for symbol in redox}
    total_electrons = sum(electrons.values())

    def mean_over_redox(values: dict[str, float]) -> float:
        return sum(values[symbol] * redox[symbol] for symbol in redox) / n_redox if n_redox else 0.0

    def electron_weighted(value) -> float:
        return (sum(value(symbol) * share for symbol, share in electrons.items()) / total_electrons
                if total_electrons > 1e-9 else 0.0)

    def couple_cost(symbol: str) -> float:
        # the mean ionisation energy of the steps undone between the two states
        low, high = states_discharged[symbol], states_charged[symbol]
        first = int(math.floor(low + 1e-9))
        return mean_step_cost(symbol, first, max(int(math.ceil(high - 1e-9)), first + 1))

    oxygen = discharged.get("O", 0.0)
    formers = sum(amount for symbol, amount in discharged.items() if symbol in OXO_FORMERS)
    # Where the rules do not fit (charge_unbalanced) a state can reach +30 and a couple 3000 eV: kept
    # as they were, those few rows set the features' standardised scale for every other.
    def capped(value: float) -> float:
        return min(value, float(MAX_STATE))

    scalars = {
        "redox_state_charged": capped(mean_over_redox(states_charged)),
        "redox_state_discharged": capped(mean_over_redox(states_discharged)),
        "electrons_per_redox_cation": gained * z / n_redox if n_redox else 0.0,
        "redox_cations_per_framework_atom": n_redox * per_framework_atom,
        "ions_gained_per_framework_atom": gained * per_framework_atom,
        "ions_charged_per_framework_atom": charged.get(working_ion, 0.0) * per_framework_atom,
        "electrons_per_anion_charge": gained * z / anion if anion > 0 else 0.0,
        "log_framework_atoms": math.log1p(framework_atoms),
        "no_redox_cation": float(n_redox == 0),
        "charge_unbalanced": float(left_discharged < -1e-9 or (n_redox == 0 and abs(left_charged) > 1e-6)
                                   or any(state > _max_state(symbol) + 1e-6 for symbol, state in states_charged.items())),
        "couple_ionisation_energy": min(UNTABULATED_EV, electron_weighted(couple_cost)),
        "couple_state_from": capped(electron_weighted(lambda symbol: states_charged[symbol])),
        "couple_state_to": capped(electron_weighted(lambda symbol: states_discharged[symbol])),
        "redox_electronegativity": mean_over_redox({symbol: _electronegativity(symbol) for symbol in redox}),
        "oxo_formers_per_oxygen": formers / oxygen if oxygen > 0 else 0.0,
    }
    anions = [discharged.get(symbol, 0.0) * per_framework_atom for symbol in ANION_ELEMENTS]
    return (*(scalars[name] for name in SCALARS), *anions,
            *_shares(redox, n_redox), *_shares(electrons, total_electrons))


def _shares(values: dict[str, float], total: float) -> list[float]:
    """Per REDOX_ELEMENTS column (then 'other'), each element's share of ``total``."""
    shares = dict.fromkeys((*REDOX_ELEMENTS, "other"), 0.0)
    if total > 1e-9:
        for symbol, value in values.items():
            shares[symbol if symbol in shares else "other"] += value / total
    return list(shares.values())


@lru_cache(maxsize=None)
def _max_state(symbol: str) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        known = Element(symbol).max_oxidation_state
    return float(min(known, MAX_STATE)) if known and known > 0 else float(MAX_STATE)


@lru_cache(maxsize=None)
def _electronegativity(symbol: str) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for the noble gases, which have none
        value = Element(symbol).X
    return float(value) if value is not None and math.isfinite(value) else 0.0


def redox_features(electrodes: pd.DataFrame) -> pd.DataFrame:
    """One row of :data:`FEATURE_NAMES` per electrode (same index)."""
    rows = [electrode_features(charged, discharged, ion) for charged, discharged, ion in
            zip(electrodes["formula_charge"], electrodes["formula_discharge"], electrodes["working_ion"])]
    return pd.DataFrame(np.array(rows, dtype=float).reshape(len(rows), len(FEATURE_NAMES)),
                        columns=list(FEATURE_NAMES), index=electrodes.index)
