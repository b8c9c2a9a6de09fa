"""The models a run can train and a user can name, and what each one's networks read.

Kept apart from features.py's transformers, which need scikit-learn and pymatgen: the Snakefile
reads this registry every time it is parsed (`snakemake -n`, every cluster job) and
`electrode-ml --help` lists its names, and neither needs the numerical stack for that.
"""

from __future__ import annotations

from dataclasses import dataclass

from electrode_ml.errors import InputError

# The DFT inputs of feature set 2 (Table 1: formation energy, band gap, Fermi level, stability, energy per atom).
DFT_FIELDS = tuple(
    f"{end}_{name}"
    for end in ("charge", "discharge")
    for name in ("formation_energy_per_atom", "band_gap", "efermi", "energy_per_atom")
) + ("stability_charge", "stability_discharge")


@dataclass(frozen=True)
class FeatureSet:
    dft: bool = False  # the DFT properties of both end members (feature set 2)
    redox: bool = False  # the oxidation-state chemistry of the formulas


# The models that train networks of their own, by the inputs their networks read.
FEATURE_SETS = {
    "model1": FeatureSet(),
    "model2": FeatureSet(dft=True),
    "model1_redox": FeatureSet(redox=True),
}
# A physics model reuses the networks of another model (see physics.py): model1_phys takes its
# voltage from the chemistry-informed networks, model2_phys (voltage from DFT) from model2's.
PHYSICS_BASES = {"model1_phys": "model1_redox", "model2_phys": "model2"}
# Every model a user can name in `models` or `--model`.
KNOWN_MODELS = (*FEATURE_SETS, *PHYSICS_BASES)


def is_physics_model(model: str) -> bool:
    return model in PHYSICS_BASES


def base_model(model: str) -> str:
    """The model whose features and networks a model uses: its own, or a physics model's base."""
    return PHYSICS_BASES.get(model, model)


def feature_set(model: str) -> FeatureSet:
    base = base_model(model)
    if base not in FEATURE_SETS:
        raise InputError(f"models: unknown model {model!r} (known: {', '.join(KNOWN_MODELS)})")
    return FEATURE_SETS[base]


def uses_dft(model: str) -> bool:
    return feature_set(model).dft


def uses_voltage_trees(model: str) -> bool:
    """A physics model without DFT learns its voltage, from networks and trees (trees.py)."""
    return is_physics_model(model) and not uses_dft(model)


def variants_of(base: str, models: list[str]) -> list[str]:
    """The models in ``models`` that use ``base``'s features and networks (itself included)."""
    return [model for model in models if base_model(model) == base]


def voltage_tree_settings(models: list[str], settings: dict) -> dict:
    """The ``voltage_trees`` settings a job serving ``models`` depends on: none when no model of them
    blends trees, so that a change of the trees does not rerun jobs it cannot change."""
    return dict(settings) if any(uses_voltage_trees(model) for model in models) else {}


def paper_counterpart(model: str) -> str:
    """The paper's model that reads the same kind of inputs: model #2 with DFT, else model #1."""
    return "model2" if uses_dft(model) else "model1"
