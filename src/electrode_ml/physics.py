"""What the paper learned but physics already knows: capacity from stoichiometry, voltage from DFT energies.

The physics-informed models (``model1_phys``, ``model2_phys``) take capacity (and, for model2_phys,
voltage) from physics wherever it describes the row, and energy as voltage x capacity. For a row
the physics cannot describe (no ion gained from the charged to the discharged formula, as in the
snapshot's rows whose charged formula holds more ion than the discharged one) the network predicts;
where only model2_phys's
DFT voltage fails (energies outside the training range that imply an implausible voltage, an ion
without a reference), the network predicts the voltage alone. An implausible voltage from energies
inside the training range indicts the formulas instead, and the network predicts all three. The
networks are those
of ``models.PHYSICS_BASES``: model2's for model2_phys, and for model1_phys, whose voltage always
comes from a network, those of model1_redox (feature set 1 plus the redox chemistry of redox.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from electrode_ml.chemistry import capacity_mah_g, ion_count, molar_mass, parse_formula
from electrode_ml.schema import ION_CHARGE, PLAUSIBLE_VOLTAGE, TARGETS


def implausible_dft(window: tuple[float, float] = PLAUSIBLE_VOLTAGE) -> str:
    return "DFT energies imply a voltage outside {:g}..{:g} V".format(*window)


def suspect_formulas(window: tuple[float, float] = PLAUSIBLE_VOLTAGE) -> str:
    return f"{implausible_dft(window)} with DFT fields inside the training range: the formulas' ion counts are suspect"


NO_REFERENCE = "no reference energy of the working ion (no training electrode of this ion)"
# What the physics computes each target from, for the figures that say where a value came from.
BASIS = {"average_voltage": "DFT energies", "capacity_grav": "stoichiometry",
         "energy_grav": "DFT voltage × stoich. capacity"}
# The DFT fields the thermodynamic voltage reads, whose training range tells MP's energies from others.
ENERGY_FIELDS = ("charge_energy_per_atom", "discharge_energy_per_atom")


def ions_gained(electrodes: pd.DataFrame) -> np.ndarray:
    """Working-ion atoms gained per framework unit from the charged to the discharged formula."""
    return np.array([ion_count(d, ion) - ion_count(c, ion) for c, d, ion in
                     zip(electrodes["formula_charge"], electrodes["formula_discharge"], electrodes["working_ion"])])


def baseline_reasons(electrodes: pd.DataFrame) -> np.ndarray:
    """Why the stoichiometric physics does not describe a row ('' where it does)."""
    return np.where(ions_gained(electrodes) > 0, "", "no working ion gained from charged to discharged formula").astype(object)


def stoichiometric_capacity_array(electrodes: pd.DataFrame) -> np.ndarray:
    """:func:`electrode_ml.chemistry.stoichiometric_capacity` over a frame (0 where no ion is gained),
    4x faster once the formulas are parsed (0.03 s against 0.11 s on the 4300 electrodes)."""
    gained = ions_gained(electrodes)
    charge = electrodes["working_ion"].map(ION_CHARGE).to_numpy(dtype=float)
    mass = np.array([molar_mass(parse_formula(formula)) for formula in electrodes["formula_discharge"]])
    return np.where(gained > 0, capacity_mah_g(gained, charge, mass), 0.0)


def energy_difference(electrodes: pd.DataFrame) -> np.ndarray:
    """N_d e_d - N_c e_c in eV per framework unit, from the DFT energies per atom."""
    atoms_d = np.array([parse_formula(f).num_atoms for f in electrodes["formula_discharge"]])
    atoms_c = np.array([parse_formula(f).num_atoms for f in electrodes["formula_charge"]])
    return atoms_d * electrodes["discharge_energy_per_atom"].to_numpy() - atoms_c * electrodes["charge_energy_per_atom"].to_numpy()


def fit_ion_references(electrodes: pd.DataFrame) -> dict[str, float]:
    """Energy per atom of each ion's metal in MP's scale, fitted on the given (training) rows.

    Each row implies mu = (N_d e_d - N_c e_c + n z V) / n; the median over an ion's rows is
    robust to the multi-step and alloy rows where the single-step formula does not hold.
    """
    gained = ions_gained(electrodes)
    charge = electrodes["working_ion"].map(ION_CHARGE).to_numpy(dtype=float)
    usable = gained > 0
    implied = (energy_difference(electrodes) + gained * charge * electrodes["average_voltage"].to_numpy())
    implied = np.divide(implied, gained, out=np.full(len(electrodes), np.nan), where=usable)
    frame = pd.DataFrame({"ion": electrodes["working_ion"].to_numpy(), "mu": implied})[usable]
    return {ion: float(value) for ion, value in frame.groupby("ion")["mu"].median().items()}


def thermodynamic_voltage(electrodes: pd.DataFrame, references: dict[str, float]) -> np.ndarray:
    """V = -(N_d e_d - N_c e_c - n mu_ion) / (n z); NaN where no ion is gained or mu is unknown."""
    gained = ions_gained(electrodes)
    charge = electrodes["working_ion"].map(ION_CHARGE).to_numpy(dtype=float)
    mu = electrodes["working_ion"].map(references).to_numpy(dtype=float)
    numerator = -(energy_difference(electrodes) - gained * mu)
    with np.errstate(invalid="ignore", divide="ignore"):
        voltage = numerator / (gained * charge)
    return np.where((gained > 0) & np.isfinite(mu), voltage, np.nan)


@dataclass
class PhysicsBaseline:
    """Fitted physics of one physics model, used where it holds; the network covers the rest.

    The network is trained on the full targets and used only where physics is NaN. Measured on
    the snapshot (model2_phys, one network): a learned residual added on top of the thermodynamic
    voltage everywhere made validation MAE worse (0.033 V vs 0.023 V), because the residual is
    zero for 96 % of rows and the network's noise is not; a network trained on the residual and
    used only where physics is NaN predicted those rows' capacity worse (test 7.0 vs 3.0 mAh/g).
    """

    uses_voltage: bool
    ion_references: dict[str, float] = field(default_factory=dict)
    # (min, max) of each of ENERGY_FIELDS over the training rows; None in a baseline pickled before
    # it was recorded (a class attribute, so such a baseline reads None and keeps every capacity).
    energy_range: dict[str, tuple[float, float]] | None = None
    # The DFT voltages that are plausible: -1..7 V widened to the training voltages, so that a run
    # whose data.voltage_window keeps MP's electrodes above 7 V does not call their formulas
    # suspect (None in a baseline pickled before it was recorded: -1..7 V).
    voltage_range: tuple[float, float] | None = None

    def fit(self, train: pd.DataFrame) -> "PhysicsBaseline":
        if self.uses_voltage:
            self.ion_references = fit_ion_references(train)
            self.energy_range = {name: (float(train[name].min()), float(train[name].max())) for name in ENERGY_FIELDS}
            low, high = PLAUSIBLE_VOLTAGE
            self.voltage_range = (min(low, float(train["average_voltage"].min())),
                                  max(high, float(train["average_voltage"].max())))
        return self

    @property
    def plausible_voltage(self) -> tuple[float, float]:
        return self.voltage_range or PLAUSIBLE_VOLTAGE

    @property
    def voltage_only(self) -> tuple[str, ...]:
        """Reasons that concern the DFT voltage only: the stoichiometric capacity still holds."""
        return implausible_dft(self.plausible_voltage), NO_REFERENCE

    def energies_in_training_range(self, electrodes: pd.DataFrame) -> np.ndarray:
        """Per row, whether both DFT energies lie inside the training range (False without a record).

        The same range as :func:`electrode_ml.features.dft_outside_training` checks, kept here so the
        physics needs no featuriser. A missing energy counts as outside: it says nothing about the formulas."""
        if self.energy_range is None:
            return np.zeros(len(electrodes), dtype=bool)
        inside = np.ones(len(electrodes), dtype=bool)
        for name, (low, high) in self.energy_range.items():
            values = electrodes[name].to_numpy(dtype=float)
            inside &= (values >= low) & (values <= high)
        return inside

    def reasons(self, electrodes: pd.DataFrame) -> np.ndarray:
        reasons = baseline_reasons(electrodes)
        if self.uses_voltage:
            # DFT end members that imply an impossible voltage are not the energies of the materials
            # the formulas describe; an ion no training electrode had has no reference energy. Energies
            # outside the training range are not MP's (another code's total energies), and the
            # formulas may still be right; inside it, the usual cause is a formula normalised to the
            # wrong ion count (MP's rounded formulas: Li10Fe5Co3O16 written Li1Fe5Co3O16), which the
            # stoichiometric capacity would repeat (2-9x too low on the 19 such rows of the raw snapshot).
            voltage = thermodynamic_voltage(electrodes, self.ion_references)
            low, high = self.plausible_voltage
            described = reasons == ""
            unknown_ion = ~electrodes["working_ion"].isin(list(self.ion_references)).to_numpy()
            implausible = described & ~unknown_ion & ~((voltage > low) & (voltage < high))
            suspect = implausible & self.energies_in_training_range(electrodes)
            reasons = np.where(described & unknown_ion, NO_REFERENCE, reasons)
            reasons = np.where(implausible, np.where(suspect, suspect_formulas(self.plausible_voltage),
                                                     implausible_dft(self.plausible_voltage)), reasons)
        return reasons

    def transform(self, electrodes: pd.DataFrame, reasons: np.ndarray | None = None) -> np.ndarray:
        """(n, 3) physics value of voltage, capacity, energy; NaN where the network must predict.

        The capacity is stoichiometry's wherever the formulas describe the insertion: the DFT
        reasons (:attr:`voltage_only`) take the voltage alone to the networks (a candidate with a
        total energy for its DFT fields got 34 018 mAh/g from them where its formulas say 51.6);
        :func:`suspect_formulas` takes the capacity too, as the formulas are what is wrong.
        ``reasons``, from :meth:`reasons` on the same rows, spares parsing every formula again
        for a caller that reports them too (``electrode-ml predict``)."""
        reasons = self.reasons(electrodes) if reasons is None else reasons
        applies = reasons == ""
        capacity = np.where(applies | np.isin(reasons, self.voltage_only), stoichiometric_capacity_array(electrodes), np.nan)
        voltage = np.full(len(electrodes), np.nan)
        if self.uses_voltage:
            voltage = np.where(applies, thermodynamic_voltage(electrodes, self.ion_references), np.nan)
        return np.column_stack([voltage, capacity, voltage * capacity])

    def summary(self, electrodes: pd.DataFrame) -> dict:
        reasons = pd.Series(self.reasons(electrodes))
        return {
            "rows": int(len(reasons)),
            "physics_applies": int((reasons == "").sum()),
            "network_only": {reason: int(n) for reason, n in reasons[reasons != ""].value_counts().items()},
            "ion_references_eV_per_atom": self.ion_references,
        }


def fit_physics(labelled: pd.DataFrame, uses_voltage: bool) -> tuple[PhysicsBaseline, pd.DataFrame]:
    """A physics model's physics, fitted on the training rows of ``labelled`` (electrodes with their
    ``split``), and its table: battery_id, split and each target's value, NaN where the network must
    predict. The physics rule and the evaluations on other splits both build it here, so that their
    metrics stay comparable."""
    physics = PhysicsBaseline(uses_voltage=uses_voltage).fit(labelled[labelled["split"] == "train"])
    values = pd.DataFrame(physics.transform(labelled), columns=list(TARGETS))
    return physics, pd.concat([labelled[["battery_id", "split"]].reset_index(drop=True), values], axis=1)


def apply_physics(predictions: pd.DataFrame, physics: pd.DataFrame) -> pd.DataFrame:
    """One seed's prediction table (battery_id + targets) with physics taking over where it holds."""
    aligned = physics.set_index("battery_id").loc[predictions["battery_id"], list(TARGETS)].to_numpy()
    combined = predictions.copy()
    combined[list(TARGETS)] = combine(aligned, predictions[list(TARGETS)].to_numpy())
    return combined


def combine(physics: np.ndarray, network_output: np.ndarray) -> np.ndarray:
    """Physics where it holds (non-NaN), the network elsewhere; energy always equals voltage x capacity."""
    physics = np.broadcast_to(physics, network_output.shape)
    combined = np.where(np.isnan(physics), network_output, physics)
    voltage, capacity, energy = (TARGETS.index(name) for name in ("average_voltage", "capacity_grav", "energy_grav"))
    combined[..., energy] = combined[..., voltage] * combined[..., capacity]
    return combined
