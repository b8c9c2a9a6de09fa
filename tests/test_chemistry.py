import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from electrode_ml.chemistry import element_fractions, ion_count, molar_mass, parse_formula, stoichiometric_capacity
from electrode_ml.errors import InputError


def test_zero_ion_count_is_legal_and_vanishes():
    assert ion_count("Na0VO2", "Na") == 0.0
    assert ion_count("Li0.75TiO2", "Li") == 0.75


def test_element_fractions_sum_to_one_and_sit_at_atomic_number():
    vector = element_fractions("LiFePO4")
    assert vector.shape == (118,)
    assert np.isclose(vector.sum(), 1.0)
    assert np.isclose(vector[2], 1 / 7)  # Li, Z = 3
    assert np.isclose(vector[7], 4 / 7)  # O, Z = 8


@pytest.mark.parametrize("formula, message", [
    # pymatgen drops '@' and reads 1e2 as 100: both would have become another material
    ("LiFe@PO4", "malformed formula 'LiFe@PO4': '@' at character 5 is not an element symbol"),
    ("Li1e2FePO4", "'e' at character 4 is not an element symbol, a count or a bracket"),
    ("LiFePO4·2H2O", "'·' at character 8"),
    ("Li-1O", "'-' at character 3"),
    ("Na1Fe(PO4", "the '\\(' at character 6 has no partner"),
    ("Li(Fe]PO4", "the '\\]' at character 6 has no partner"),
    ("Li2O)", "the '\\)' at character 5 has no partner"),
    # the symbol as written, not pymatgen's placeholder species ('Xx0+')
    ("Li2Xx3O4", "unknown element 'Xx' in formula 'Li2Xx3O4'"),
    ("Xx2O", "unknown element 'Xx'"),
    ("", "empty formula"),
])
def test_bad_formulas_name_the_character_or_symbol_at_fault(formula, message):
    with pytest.raises(InputError, match=message):
        parse_formula(formula)


@pytest.mark.parametrize("formula, same_as", [
    ("Li(FePO4)2", "LiFe2P2O8"), ("Li[Fe(PO4)]2", "LiFe2P2O8"), (" Li0.5 FePO4 ", "Li0.5FePO4"),
    ("Li.5FePO4", "Li0.5FePO4"), ("Li{CoO2}", "LiCoO2"),
])
def test_brackets_spaces_and_bare_decimals_are_formulas(formula, same_as):
    assert parse_formula(formula).almost_equals(parse_formula(same_as))


def test_every_snapshot_formula_parses(snapshot_text):
    for formula in set(snapshot_text.formula_charge) | set(snapshot_text.formula_discharge):
        parse_formula(formula)


def test_molar_mass_is_pymatgens_weight_to_the_last_bit(snapshot_text):
    """The plain-float sum replaces pymatgen's unit-carrying one for speed: every capacity the runs
    computed depends on it being the same number."""
    formulas = set(snapshot_text.formula_charge) | set(snapshot_text.formula_discharge) | {"Li3.25(Fe0.5Mn0.5)2(PO4)3"}
    for formula in formulas:
        composition = parse_formula(formula)
        assert molar_mass(composition) == float(composition.weight), formula


def test_capacity_of_lifepo4_matches_textbook():
    # LiFePO4: 1 Li per 157.76 g/mol -> 169.9 mAh/g
    assert stoichiometric_capacity("Li0FePO4", "LiFePO4", "Li") == pytest.approx(169.9, abs=0.2)


def test_capacity_uses_ion_charge():
    # One Mg2+ carries two electrons.
    single = stoichiometric_capacity("Li0TiS2", "Li1TiS2", "Li")
    double = stoichiometric_capacity("Mg0TiS2", "Mg1TiS2", "Mg")
    assert double > single
    assert double == pytest.approx(2 * 96485.33212 / (3.6 * parse_formula("MgTiS2").weight))


ELEMENTS = ["Li", "Na", "Mg", "Fe", "Mn", "Co", "Ni", "O", "S", "P", "F", "Ti", "V"]


@settings(max_examples=60, deadline=None)
@given(amounts=st.dictionaries(st.sampled_from(ELEMENTS), st.integers(1, 12), min_size=1, max_size=4),
       factor=st.integers(2, 5), gained=st.integers(1, 4))
def test_capacity_is_nonnegative_and_invariant_to_whole_scaling(amounts, factor, gained):
    framework = {el: n for el, n in amounts.items() if el != "Li"} or {"O": 2}
    charged = "Li0" + "".join(f"{el}{n}" for el, n in framework.items())
    discharged = f"Li{gained}" + "".join(f"{el}{n}" for el, n in framework.items())
    scaled_charged = "Li0" + "".join(f"{el}{n * factor}" for el, n in framework.items())
    scaled_discharged = f"Li{gained * factor}" + "".join(f"{el}{n * factor}" for el, n in framework.items())
    capacity = stoichiometric_capacity(charged, discharged, "Li")
    assert capacity > 0
    assert stoichiometric_capacity(scaled_charged, scaled_discharged, "Li") == pytest.approx(capacity)


@settings(max_examples=60, deadline=None)
@given(amounts=st.dictionaries(st.sampled_from(ELEMENTS), st.floats(0.05, 20), min_size=1, max_size=5))
def test_parsing_round_trips_and_fractions_are_finite(amounts):
    formula = "".join(f"{el}{n:.3f}" for el, n in amounts.items())
    composition = parse_formula(formula)
    assert parse_formula(composition.formula.replace(" ", "")).almost_equals(composition)
    vector = element_fractions(formula)
    assert np.all(np.isfinite(vector)) and np.isclose(vector.sum(), 1.0)


def test_stoichiometric_capacity_matches_snapshot_for_most_rows(snapshot_text):
    rows = snapshot_text.sample(400, random_state=0)
    computed = np.array([stoichiometric_capacity(c, d, ion) for c, d, ion in
                         zip(rows.formula_charge, rows.formula_discharge, rows.working_ion)])
    relative = np.abs(computed - rows.capacity_grav.astype(float)) / rows.capacity_grav.astype(float)
    assert (relative < 0.01).mean() > 0.9


# --- issue #7 -------------------------------------------------------------------------------------------

from hypothesis import assume  # noqa: E402

def test_formula_whose_counts_are_all_zero_is_refused_but_a_zero_ion_count_is_legal():
    for formula in ("Li0Fe0P0O0", "Li0", "(LiO)0", "Li0.0O0.000"):
        with pytest.raises(InputError, match="no atoms"):
            parse_formula(formula)
    assert parse_formula("Li0FePO4").almost_equals(parse_formula("FePO4"))


@pytest.mark.parametrize("formula, message", [
    ("Li" + "9" * 400 + "FePO4", "not a finite number"),
    ("Li" + "9" * 308 + "O" + "9" * 308, "atom count too large"),
])
def test_amount_overflowing_to_infinity_is_refused(formula, message):
    """pymatgen reads a count of 400 digits as inf; such a row would featurise as an empty composition
    with NaN capacity. Two counts near 1e308 are finite, their sum is not."""
    with pytest.raises(InputError, match=message):
        parse_formula(formula)


@pytest.fixture(scope="module")
def fitted_featurizers(snapshot_path):
    """The featurisers of every network model fitted on 40 snapshot electrodes, as the workflow fits them
    (with the paper's space-group block too, so that every block is exercised)."""
    import pandas as pd

    from electrode_ml.data import validate_electrodes
    from electrode_ml.features import build_featurizer
    from electrode_ml.schema import WORKING_IONS

    raw = pd.read_csv(snapshot_path, dtype=str, keep_default_na=False).sample(40, random_state=3)
    electrodes, _ = validate_electrodes(raw, ions=list(WORKING_IONS), voltage_window=(-1, 7))
    return {model: build_featurizer(model, space_groups=True).fit(electrodes)
            for model in ("model1", "model2", "model1_redox")}


def _composition_text(amounts: dict) -> str:
    return "".join(f"{symbol}{amount:.4f}" for symbol, amount in amounts.items())


def _element_symbols() -> list[str]:
    from pymatgen.core import Element

    return [element.symbol for element in Element]


_FINITE = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
_AMOUNTS = st.dictionaries(st.sampled_from(_element_symbols()), st.floats(0, 1e6), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.fixed_dictionaries({
    "charge": _AMOUNTS, "discharge": _AMOUNTS,
    "ion": st.sampled_from(["Li", "Na", "K", "Rb", "Cs", "Mg", "Ca", "Zn", "Al", "Y"]),
    "systems": st.tuples(*[st.sampled_from(["Triclinic", "Monoclinic", "Orthorhombic", "Tetragonal", "Trigonal",
                                            "Hexagonal", "Cubic"])] * 2),
    "groups": st.tuples(st.integers(1, 230), st.integers(1, 230)),
    "dft": st.lists(_FINITE, min_size=10, max_size=10),
}), min_size=1, max_size=5))
def test_feature_rows_are_finite_for_any_valid_composition(fitted_featurizers, rows):
    """Whatever valid formulas come in (any of the 118 elements, counts 0 .. 1e6), every feature is finite."""
    import pandas as pd

    from electrode_ml.models import DFT_FIELDS

    frame_rows = []
    for row in rows:
        formulas = {end: _composition_text(row[end]) for end in ("charge", "discharge")}
        for formula in formulas.values():
            try:
                parse_formula(formula)
            except InputError:
                assume(False)  # not a valid composition (every count rounds to zero): refused upstream
        frame_rows.append({
            "battery_id": "x", "formula_charge": formulas["charge"], "formula_discharge": formulas["discharge"],
            "working_ion": row["ion"], "charge_crystal_system": row["systems"][0],
            "discharge_crystal_system": row["systems"][1], "charge_space_group_number": row["groups"][0],
            "discharge_space_group_number": row["groups"][1], **dict(zip(DFT_FIELDS, row["dft"])),
        })
    frame = pd.DataFrame(frame_rows)
    for model, featurizer in fitted_featurizers.items():
        values = np.asarray(featurizer.transform(frame), dtype=float)
        assert values.shape[0] == len(frame)
        assert np.isfinite(values).all(), (model, frame_rows)


def test_insertion_problem_names_the_field_and_why():
    from electrode_ml.chemistry import insertion_problem

    assert insertion_problem("Li0FePO4", "Li1FePO4", "Li") is None
    # one host, but as many units at both ends: the physics counts ions, mass and atoms as written
    field, why = insertion_problem("Li0.5FePO4", "Li2Fe2P2O8", "Li")
    assert field == "formula_discharge" and "holds 2 FePO4 unit(s), formula_charge 1" in why
    assert insertion_problem("Li1Fe2P2O8", "Li2Fe2(PO4)2", "Li") is None
    assert insertion_problem("Li0.5CoO2", "Li1CoO2", "Li") is None
    field, why = insertion_problem("Li1FePO4", "Li0FePO4", "Li")
    assert field == "formula_discharge" and "no more Li per FePO4" in why and "(0 against 1)" in why
    field, why = insertion_problem("Li0FePO4", "Li1FePO4", "Na")  # the Li is then part of the host
    assert field == "formula_discharge" and "LiFePO4 is not the charged formula's FePO4" in why
    field, why = insertion_problem("Li1", "Li2", "Li")
    assert field == "formula_charge" and "no framework besides the working ion" in why
    # amounts written apart by less than pymatgen's tolerance are one host; more apart, two
    assert insertion_problem("Li0FePO4", "Li1FePO3.9999999999", "Li") is None
    field, why = insertion_problem("Li0FePO4", "Li1FePO3.99", "Li")
    assert field == "formula_discharge" and "host Fe1P1O3.99 is not the charged formula's FePO4" in why
    field, why = insertion_problem("Li2Fe2P2O8", "Li1.5Fe2P2O8", "Li")  # per framework unit, as written
    assert field == "formula_discharge" and "(0.75 against 1)" in why


def test_ends_written_as_several_framework_units_are_rewritten_per_one():
    """As pymatgen reduces (the greatest common divisor of whole amounts, none for fractional ones),
    without its cost; every snapshot electrode is written per one unit."""
    from pymatgen.core import Composition

    from electrode_ml.chemistry import one_framework_unit

    assert one_framework_unit("Li0Fe2P2O8", "Li2Fe2P2O8", "Li") == ("Li0Fe1P1O4", "Li1Fe1P1O4")
    assert one_framework_unit("Li3Fe4(PO4)4", "Li4Fe4P4O16", "Li") == ("Li0.75Fe1P1O4", "Li1Fe1P1O4")
    assert one_framework_unit("Mg0Mo6S8", "Mg2Mo6S8", "Mg") == ("Mg0Mo3S4", "Mg1Mo3S4")  # the Chevrel phase
    for charged, discharged in [("Li0FePO4", "Li1FePO4"), ("Li0.5Fe0.5Mn0.5PO4", "Li1Fe0.5Mn0.5PO4"),
                                ("Li0Fe2P2O7.5", "Li2Fe2P2O7.5"), ("Li0Ti3Mn5O16", "Li10Ti3Mn5O16")]:
        assert one_framework_unit(charged, discharged, "Li") is None
        framework = Composition(discharged).as_dict()
        framework.pop("Li")
        assert Composition(framework).get_reduced_composition_and_factor()[1] == 1
