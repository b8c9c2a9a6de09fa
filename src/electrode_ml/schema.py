"""The electrode table's columns and vocabularies: the contract between data sources and every later stage."""

# The snapshot's columns with the dtype each is stored as after loading.
ELECTRODE_COLUMNS: dict[str, str] = {
    "battery_id": "string",
    "battery_formula": "string",
    "formula_charge": "string",
    "formula_discharge": "string",
    "framework_formula": "string",
    "working_ion": "string",
    "num_steps": "int64",
    "stability_charge": "float64",
    "stability_discharge": "float64",
    "adj_pairs": "string",
    "capacity_grav": "float64",
    "energy_grav": "float64",
    "capacity_vol": "float64",
    "energy_vol": "float64",
    "average_voltage": "float64",
    "id_charge": "string",
    "id_discharge": "string",
    "charge_crystal_system": "string",
    "charge_space_group_number": "int64",
    "charge_energy_per_atom": "float64",
    "charge_formation_energy_per_atom": "float64",
    "charge_band_gap": "float64",
    "charge_efermi": "float64",
    "discharge_crystal_system": "string",
    "discharge_space_group_number": "int64",
    "discharge_energy_per_atom": "float64",
    "discharge_formation_energy_per_atom": "float64",
    "discharge_band_gap": "float64",
    "discharge_efermi": "float64",
}

TARGETS = ("average_voltage", "capacity_grav", "energy_grav")
UNITS = {"average_voltage": "V", "capacity_grav": "mAh/g", "energy_grav": "Wh/kg"}

PLAUSIBLE_VOLTAGE = (-1.0, 7.0)  # V, the paper's window on MP average voltages
PLAUSIBLE_VOLTAGE_TEXT = "{:g}..{:g} V".format(*PLAUSIBLE_VOLTAGE)

# The screen's criteria (screen.na config keys, `electrode-ml screen` options) -> target column;
# the thresholds are inclusive lower bounds.
CRITERIA = {"voltage": "average_voltage", "capacity": "capacity_grav", "energy": "energy_grav"}
# The paper's filter: `electrode-ml screen`'s defaults, and config.yaml's screen.na (a test keeps them equal).
DEFAULT_NA_THRESHOLDS = {"voltage": 2.0, "capacity": 100.0, "energy": 200.0}

# Charge carried by each working ion (used by the stoichiometric capacity).
ION_CHARGE: dict[str, int] = {
    "Li": 1, "Na": 1, "K": 1, "Rb": 1, "Cs": 1,
    "Mg": 2, "Ca": 2, "Zn": 2,
    "Al": 3, "Y": 3,
}
WORKING_IONS = tuple(ION_CHARGE)

CRYSTAL_SYSTEMS = (
    "Triclinic", "Monoclinic", "Orthorhombic", "Tetragonal", "Trigonal", "Hexagonal", "Cubic",
)

# Fields the summary endpoint supplies for each end member, keyed by the suffix used in the table.
END_MEMBER_FIELDS = (
    "crystal_system", "space_group_number", "energy_per_atom",
    "formation_energy_per_atom", "band_gap", "efermi",
)
