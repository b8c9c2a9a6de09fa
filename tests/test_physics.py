import numpy as np
import pandas as pd
import pytest

from electrode_ml.data import exact_end_formulas, read_electrode_csv, validate_electrodes
from electrode_ml.physics import (PhysicsBaseline, baseline_reasons, combine, implausible_dft, suspect_formulas,
                                  fit_ion_references, stoichiometric_capacity_array, thermodynamic_voltage)
from electrode_ml.schema import WORKING_IONS


@pytest.fixture(scope="module")
def snapshot_electrodes(snapshot_path):
    return validate_electrodes(read_electrode_csv(snapshot_path), ions=list(WORKING_IONS), voltage_window=(-1, 7))[0]


@pytest.fixture(scope="module")
def electrodes(snapshot_electrodes):
    return exact_end_formulas(snapshot_electrodes)[0]


def test_stoichiometric_capacity_matches_the_snapshot_for_every_row_once_formulas_are_exact(electrodes):
    applies = baseline_reasons(electrodes) == ""
    capacity = stoichiometric_capacity_array(electrodes)
    assert applies.all()
    np.testing.assert_allclose(capacity, electrodes["capacity_grav"], rtol=1e-6, atol=1e-4)


def test_formulas_as_mp_writes_them_miss_the_capacity_of_some_rows(snapshot_electrodes):
    applies = baseline_reasons(snapshot_electrodes) == ""
    error = np.abs(stoichiometric_capacity_array(snapshot_electrodes) - snapshot_electrodes["capacity_grav"])
    assert 0.99 < applies.mean() < 1 and (error[applies] > 1).sum() > 50


def test_thermodynamic_voltage_reproduces_a_handmade_cell():
    # LiCoO2 toy energies: mu_Li = -1.9 eV/atom; inserting 1 Li lowers N e by 1.9 + 3.9 eV -> 3.9 V.
    charged_energy, atoms_charged = -6.0, 3  # CoO2
    discharged_total = atoms_charged * charged_energy + (-1.9) - 3.9
    cell = pd.DataFrame({
        "formula_charge": ["Li0CoO2"], "formula_discharge": ["LiCoO2"], "working_ion": ["Li"],
        "charge_energy_per_atom": [charged_energy], "discharge_energy_per_atom": [discharged_total / 4],
        "average_voltage": [3.9],
    })
    assert thermodynamic_voltage(cell, {"Li": -1.9})[0] == pytest.approx(3.9)
    assert fit_ion_references(cell)["Li"] == pytest.approx(-1.9)
    # a divalent ion carries two electrons: the same energy change gives half the voltage
    mg = cell.assign(formula_charge="Mg0CoO2", formula_discharge="MgCoO2", working_ion="Mg")
    assert thermodynamic_voltage(mg, {"Mg": -1.9})[0] == pytest.approx(3.9 / 2)


def test_thermodynamic_voltage_holds_for_most_snapshot_rows(electrodes):
    train = electrodes.sample(frac=0.8, random_state=0)
    voltage = thermodynamic_voltage(electrodes, fit_ion_references(train))
    assert (np.abs(voltage - electrodes["average_voltage"]) < 0.01).mean() > 0.95


def test_rows_physics_cannot_describe_are_left_to_the_network():
    rows = pd.DataFrame({
        "formula_charge": ["Li4Mn3V5O16", "Li0FePO4", "Mg0Cr"],
        "formula_discharge": ["Li1Mn3V5O16", "Li1FePO4", "Mg3Cr"],
        "framework_formula": ["Mn3V5O16", "FePO4", "Cr"],
        "working_ion": ["Li", "Li", "Mg"],
    })
    reasons = baseline_reasons(rows)
    assert reasons[0].startswith("no working ion gained") and reasons[1] == "" and reasons[2] == ""
    physics = PhysicsBaseline(uses_voltage=False).transform(rows)
    assert np.isnan(physics[0, 1]) and physics[1, 1] == pytest.approx(169.9, abs=0.2)
    assert np.isnan(physics[:, 0]).all()  # model1_phys: voltage always from the network


def test_a_dft_voltage_left_to_the_networks_keeps_the_stoichiometric_capacity():
    """Implausible DFT energies, or an ion without a reference energy, concern the voltage only."""
    cell = pd.DataFrame({
        "formula_charge": ["Li0CoO2"] * 3 + ["Na0CoO2"], "formula_discharge": ["LiCoO2"] * 3 + ["NaCoO2"],
        "working_ion": ["Li"] * 3 + ["Na"],
        "charge_energy_per_atom": [-6.0, -6.0, -500.0, -6.0],  # the third: a total energy, another scale
        "discharge_energy_per_atom": [(3 * -6.0 - 1.9 - 3.9) / 4] * 4,
    })
    physics = PhysicsBaseline(uses_voltage=True, ion_references={"Li": -1.9})
    notes = physics.reasons(cell)
    assert notes[0] == "" and notes[2].startswith("DFT energies imply a voltage outside")
    assert notes[3].startswith("no reference energy of the working ion")
    values = physics.transform(cell, notes)
    assert values[0, 0] == pytest.approx(3.9) and np.isnan(values[2:, 0]).all()
    assert values[:3, 1] == pytest.approx([273.8] * 3, abs=0.1)  # LiCoO2's 274 mAh/g, whatever the energies
    assert values[3, 1] == pytest.approx(235.3, abs=0.1) and np.isnan(values[2:, 2]).all()


def test_a_row_needs_no_framework_column():
    rows = pd.DataFrame({"formula_charge": ["Li0.12FeBO3"], "formula_discharge": ["Li0.88FeBO3"], "working_ion": ["Li"]})
    assert baseline_reasons(rows)[0] == ""


def test_combine_takes_physics_where_it_holds_and_energy_is_v_times_c():
    physics = np.array([[np.nan, 150.0, np.nan], [np.nan, np.nan, np.nan]])
    network = np.array([[3.0, 140.0, 999.0], [2.0, 80.0, 999.0]])
    combined = combine(physics, network)
    np.testing.assert_allclose(combined, [[3.0, 150.0, 450.0], [2.0, 80.0, 160.0]])
    # several networks at once (ensemble members on the first axis)
    stacked = combine(physics[np.newaxis], np.stack([network, network]))
    assert stacked.shape == (2, 2, 3) and stacked[1, 0, 1] == 150.0


def test_an_alloy_step_is_described_by_its_stoichiometry():
    """Li1Sn -> Li4Sn gains 3 Li per Sn: the capacity of that step is 3 F / M(Li4Sn), whatever the
    framework column says (MP's frameworks never hold the working ion; candidates give none)."""
    rows = pd.DataFrame({"formula_charge": ["LiSn", "Li0FePO4"], "formula_discharge": ["Li4Sn", "Li1FePO4"],
                         "framework_formula": ["LiSn", "FePO4"], "working_ion": ["Li", "Li"],
                         "charge_energy_per_atom": [-4.0, -6.0], "discharge_energy_per_atom": [-3.0, -6.5]})
    assert baseline_reasons(rows).tolist() == ["", ""]
    values = PhysicsBaseline(uses_voltage=False, ion_references={"Li": -1.9}).transform(rows)
    li4sn = 4 * 6.94 + 118.71
    assert values[0, 1] == pytest.approx(3 * 96485.332 / 3.6 / li4sn, rel=1e-3)
    assert values[1, 1] == pytest.approx(169.9, abs=0.2)  # LiFePO4's stoichiometric capacity


def _licoo2(voltages, mu=-1.9, charge_energy=-6.0):
    """Toy Li0CoO2 -> LiCoO2 cells whose DFT energies imply the given voltages with mu_Li = ``mu``."""
    voltages = np.asarray(voltages, dtype=float)
    return pd.DataFrame({
        "formula_charge": "Li0CoO2", "formula_discharge": "LiCoO2", "working_ion": "Li",
        "charge_energy_per_atom": charge_energy, "discharge_energy_per_atom": (3 * charge_energy + mu - voltages) / 4,
        "average_voltage": voltages,
    })


def test_dft_voltages_outside_the_papers_window_are_implausible():
    cells = _licoo2([6.5, 9.0, -0.5, -1.5])  # the paper's window is -1..7 V
    assert thermodynamic_voltage(cells, {"Li": -1.9}) == pytest.approx([6.5, 9.0, -0.5, -1.5])
    notes = PhysicsBaseline(uses_voltage=True, ion_references={"Li": -1.9}).reasons(cells)
    assert notes.tolist() == ["", implausible_dft(), "", implausible_dft()]


def test_ion_reference_is_the_median_of_the_implied_energies():
    # each cell implies mu = (N_d e_d - N_c e_c + n z V) / n: -1.9, -2.0 and an outlier -5.0
    cells = pd.concat([_licoo2([3.9], mu) for mu in (-1.9, -2.0, -5.0)], ignore_index=True)
    assert fit_ion_references(cells)["Li"] == pytest.approx(-2.0)  # the mean would be -2.967



# MP-like energies: CoO2 at -7.0 eV/atom, so that LiCoO2 (-6.7 eV/atom) is far from Li's -1.9
CHARGE_ENERGY = -7.0


def _fitted_on_licoo2():
    """model2_phys physics fitted on toy LiCoO2 cells of 3.0 to 4.5 V."""
    return PhysicsBaseline(uses_voltage=True).fit(_licoo2([3.0, 3.9, 4.5], charge_energy=CHARGE_ENERGY))


def _rounded_ion_count():
    """LiCoO2's energies under formulas that count one Li per eight CoO2, as MP writes Li10Fe5Co3O16
    Li1Fe5Co3O16: the energies per atom are those of Li8Co8O16."""
    return _licoo2([3.9], charge_energy=CHARGE_ENERGY).assign(formula_charge="Li0Co8O16",
                                                               formula_discharge="Li1Co8O16")


def test_an_implausible_dft_voltage_inside_the_training_energies_leaves_capacity_to_the_network():
    """The stoichiometric capacity of a formula with the wrong ion count repeats its error (37 mAh/g
    for LiCoO2's 274), so the network predicts it, and energy, with the voltage."""
    physics, wrong = _fitted_on_licoo2(), _rounded_ion_count()
    assert physics.energies_in_training_range(wrong).all()
    assert thermodynamic_voltage(wrong, physics.ion_references)[0] == pytest.approx(-2.4)
    assert stoichiometric_capacity_array(wrong)[0] == pytest.approx(36.5, abs=0.1)
    assert physics.reasons(wrong)[0] == suspect_formulas()
    assert np.isnan(physics.transform(wrong)).all()
    assert physics.summary(wrong)["network_only"] == {suspect_formulas(): 1}


def test_an_implausible_dft_voltage_from_total_energies_keeps_the_stoichiometric_capacity():
    physics = _fitted_on_licoo2()
    total = _licoo2([3.9], charge_energy=CHARGE_ENERGY).assign(charge_energy_per_atom=-500.0)  # another code's
    assert not physics.energies_in_training_range(total).any()
    assert physics.reasons(total)[0] == implausible_dft()
    values = physics.transform(total)
    assert np.isnan(values[0, [0, 2]]).all() and values[0, 1] == pytest.approx(273.8, abs=0.1)
    # a missing energy says nothing about the formulas either
    assert not physics.energies_in_training_range(total.assign(charge_energy_per_atom=np.nan)).any()


def test_the_plausible_voltage_widens_to_the_training_voltages():
    """A data.voltage_window that keeps MP's electrodes above 7 V trains on them: their DFT voltage
    is then plausible, and their formulas not suspect (the capacity stays stoichiometry's)."""
    from electrode_ml.physics import implausible_dft

    physics = PhysicsBaseline(uses_voltage=True).fit(_licoo2([3.0, 3.9, 7.6], charge_energy=CHARGE_ENERGY))
    assert physics.plausible_voltage == (-1.0, pytest.approx(7.6))
    high = _licoo2([7.5, 8.0], charge_energy=CHARGE_ENERGY)
    assert physics.reasons(high).tolist() == ["", implausible_dft(physics.plausible_voltage)]
    values = physics.transform(high)
    assert values[0, 0] == pytest.approx(7.5) and np.isnan(values[1, 0]) and values[1, 1] == pytest.approx(273.8, abs=0.1)
    assert _fitted_on_licoo2().plausible_voltage == (-1.0, 7.0)  # inside -1..7 V: the paper's window
    low = PhysicsBaseline(uses_voltage=True).fit(_licoo2([-1.5, 3.0], charge_energy=CHARGE_ENERGY))
    assert low.plausible_voltage == (pytest.approx(-1.5), 7.0)  # and below -1 V


def test_physics_fitted_before_the_training_range_was_recorded_keeps_every_capacity():
    """A baseline unpickled from an earlier release has no energy_range in its __dict__."""
    older = PhysicsBaseline.__new__(PhysicsBaseline)
    older.__dict__.update({"uses_voltage": True, "ion_references": _fitted_on_licoo2().ion_references})
    wrong = _rounded_ion_count()
    assert older.energy_range is None and older.voltage_range is None
    assert older.reasons(wrong)[0] == implausible_dft()
    assert older.transform(wrong)[0, 1] == pytest.approx(36.5, abs=0.1)


def test_the_physics_is_fitted_on_the_training_split_alone(electrodes):
    """Validation and test rows whose energies imply another ion reference (and lie outside the
    training range) must move neither the references nor the range the suspect check reads."""
    from electrode_ml.physics import fit_physics

    lithium = electrodes[electrodes["working_ion"] == "Li"].head(60).reset_index(drop=True)
    labelled = lithium.assign(split=np.where(lithium.index < 20, "train", np.where(lithium.index < 40, "val", "test")))
    held_out = labelled["split"] != "train"
    shifted = labelled.copy()
    shifted.loc[held_out, "discharge_energy_per_atom"] -= 0.5
    physics, table = fit_physics(shifted, uses_voltage=True)  # held-out rows are the majority: a median of all moves
    alone = PhysicsBaseline(uses_voltage=True).fit(labelled[~held_out])
    assert physics.ion_references == pytest.approx(alone.ion_references)
    assert physics.energy_range == alone.energy_range
    assert list(table["battery_id"]) == list(labelled["battery_id"]) and list(table["split"]) == list(labelled["split"])
