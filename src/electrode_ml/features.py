"""Feature sets 1 and 2 of the paper's Table 1, as scikit-learn transformers fitted on the training split.

Model 1 needs no DFT: formulas, crystal systems, space groups and the working ion.
Model 2 adds the DFT properties of both end members.
model1_redox (beyond the paper, no DFT either) adds the oxidation-state chemistry of the two
formulas (:mod:`electrode_ml.redox`); its networks give model1_phys its voltage.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pymatgen.core import Element
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, StandardScaler

from electrode_ml.chemistry import N_ELEMENTS, element_fractions, parse_formula
from electrode_ml.errors import InputError
from electrode_ml.models import DFT_FIELDS, feature_set
from electrode_ml.redox import FEATURE_NAMES as REDOX_FEATURES
from electrode_ml.redox import redox_features
from electrode_ml.schema import CRYSTAL_SYSTEMS, TARGETS, WORKING_IONS

# Human-readable origin of each transformer block, written into features.json; "{steps}" is the
# block's fitted steps after the first, in order (block_origin).
ORIGINS = {
    "formula_charge": "charged formula: element fractions over 118 elements, {steps}",
    "formula_discharge": "discharged formula: element fractions over 118 elements, {steps}",
    "crystal_system": "crystal system of charged and discharged material, one-hot",
    "space_group": "space group of charged and discharged material, one-hot -> PCA",
    "working_ion": "working ion, one-hot",
    "dft": "DFT property (formation energy, band gap, Fermi level, energy per atom, stability), {steps}",
    "redox": "oxidation-state chemistry of both formulas (redox couple, anions; redox.py), standardised",
}


class ElementFractions(BaseEstimator, TransformerMixin):
    """Formula strings -> element-fraction vectors (the paper's 'manual coding' of a formula)."""

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        formulas = np.asarray(X).ravel()
        return np.vstack([element_fractions(formula) for formula in formulas]) if len(formulas) else np.zeros((0, N_ELEMENTS))

    def get_feature_names_out(self, input_features=None):
        return np.array([f"Z{z}" for z in range(1, N_ELEMENTS + 1)], dtype=object)


REDOX_INPUTS = ("formula_charge", "formula_discharge", "working_ion")


class RedoxFeatures(BaseEstimator, TransformerMixin):
    """(formula_charge, formula_discharge, working_ion) -> :data:`electrode_ml.redox.FEATURE_NAMES`."""

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return redox_features(pd.DataFrame(X, columns=list(REDOX_INPUTS))).to_numpy()

    def get_feature_names_out(self, input_features=None):
        return np.array(REDOX_FEATURES, dtype=object)


def build_featurizer(model: str, *, space_groups: bool, formula_variance: float = 0.99,
                     space_group_variance: float = 0.99, formula_scaling: str = "before_pca",
                     dft_scaling: str = "standard", seed: int = 0) -> ColumnTransformer:
    """The unfitted transformer for one model's feature set.

    The options are the config's ``features`` section, and the defaults are config.yaml's values;
    ``space_groups`` has none: the paper's feature set has that block, the workflow's does not.

    ``formula_scaling`` places the formula's min-max normalisation: ``before_pca`` scales each
    element's fraction to [0, 1] and then runs PCA (the default); ``after_pca`` scales each PCA
    component to [0, 1], which blows the low-variance, mostly-noise components up to the size of
    the leading ones and cost model1 0.07 V of single-network validation MAE on the snapshot.
    ``space_groups=False`` leaves out the space-group block (the paper's Table 1 has it; see
    docs/method.md for what it costs on the snapshot). ``dft_scaling`` is :func:`dft_block`'s.
    """

    def formula_block() -> Pipeline:
        pca = ("pca", PCA(n_components=formula_variance, svd_solver="full", random_state=seed))
        minmax = ("minmax", MinMaxScaler())
        steps = [minmax, pca] if formula_scaling == "before_pca" else [pca, minmax]
        return Pipeline([("fractions", ElementFractions()), *steps])

    blocks = [
        ("formula_charge", formula_block(), ["formula_charge"]),
        ("formula_discharge", formula_block(), ["formula_discharge"]),
        ("crystal_system",
         OneHotEncoder(categories=[list(CRYSTAL_SYSTEMS)] * 2, handle_unknown="ignore", sparse_output=False),
         ["charge_crystal_system", "discharge_crystal_system"]),
        ("working_ion", OneHotEncoder(categories=[list(WORKING_IONS)], handle_unknown="ignore",
                                      sparse_output=False), ["working_ion"]),
    ]
    if space_groups:
        blocks.insert(3, ("space_group", Pipeline([
            ("onehot", OneHotEncoder(categories=[list(range(1, 231))] * 2, handle_unknown="ignore",
                                     sparse_output=False)),
            ("pca", PCA(n_components=space_group_variance, svd_solver="full", random_state=seed)),
        ]), ["charge_space_group_number", "discharge_space_group_number"]))
    if feature_set(model).dft:
        blocks.append(("dft", dft_block(dft_scaling), list(DFT_FIELDS)))
    if feature_set(model).redox:
        # standardised: 4 networks at model1's widths reached 0.374 V validation MAE with a draft
        # of the block standardised and 0.408 V with it mapped to normal quantiles
        blocks.append(("redox", Pipeline([("chemistry", RedoxFeatures()), ("standardise", StandardScaler())]),
                       list(REDOX_INPUTS)))
    return ColumnTransformer(blocks, remainder="drop", verbose_feature_names_out=True)


def dft_block(scaling: str) -> Pipeline:
    """The DFT fields min-max scaled, as the paper has them, then standardised with ``standard``.

    A voltage is a small difference of two large energies per atom (DFT's e_d - e_c). Min-max over
    the training range, which the heavy tails of the energies and stabilities set, squeezes the
    bulk of every field into a fraction of [0, 1]; standardised, each field has unit spread.
    Measured on the snapshot at the min-max run's model2 widths (10 networks each): validation
    voltage MAE 0.240 V min-max, 0.148 V standardised; retuned, 50 networks 0.137 V
    (docs/method.md, "DFT scaling"). The min-max step stays first either way: its
    training range is what :func:`dft_outside_training` checks candidates against.
    """
    steps = [("minmax", MinMaxScaler())]
    if scaling == "standard":
        steps.append(("standardise", StandardScaler()))
    return Pipeline(steps)


def feature_frame(featurizer: ColumnTransformer, electrodes: pd.DataFrame) -> pd.DataFrame:
    """battery_id, the three targets (when present), then the feature columns."""
    values = featurizer.transform(electrodes)
    names = featurizer.get_feature_names_out()
    features = pd.DataFrame(values, columns=names, index=electrodes.index)
    kept = ["battery_id"] + [name for name in TARGETS if name in electrodes.columns]
    return pd.concat([electrodes[kept], features], axis=1).reset_index(drop=True)


def fit_feature_sets(electrodes: pd.DataFrame, split: pd.DataFrame, model: str, **options):
    """Fit on the training split only; return the fitted transformer and one frame per split.

    ``options`` are :func:`build_featurizer`'s (the config's ``features`` section)."""
    labelled = electrodes.merge(split, on="battery_id", how="inner", validate="one_to_one")
    if len(labelled) != len(electrodes):
        raise InputError(f"split: {len(electrodes) - len(labelled)} electrode(s) have no split label")
    train = labelled[labelled["split"] == "train"]
    featurizer = build_featurizer(model, **options).fit(train)
    # The ion one-hot knows all ten ions, so only this says which ones the networks learned
    featurizer.training_ions_ = tuple(sorted(train["working_ion"].unique()))
    frames = {name: feature_frame(featurizer, labelled[labelled["split"] == name]) for name in ("train", "val", "test")}
    return featurizer, frames


def training_ions(featurizer: ColumnTransformer) -> tuple[str, ...] | None:
    """The working ions of the training electrodes (None for a featuriser of an earlier release).

    An ion without a training electrode has an all-zero one-hot column at fit time: the networks'
    weights on it never moved from their random start, so they cannot score that ion at all."""
    return getattr(featurizer, "training_ions_", None)


def featurizer_inputs(featurizer: ColumnTransformer) -> list[str]:
    """The input columns a fitted featuriser reads, in the order its blocks first read them.

    What a candidate file must hold: the space groups only where the run used them
    (``features.space_groups``), the DFT fields only for a feature set with DFT.
    """
    columns: list[str] = []
    for name, transformer, selected in featurizer.transformers_:
        if name != "remainder":
            columns += [column for column in selected if column not in columns]
    return columns


def training_elements(featurizer: ColumnTransformer) -> dict[str, frozenset[str]]:
    """Per formula column, the elements some training formula held in it.

    An element no training formula held had a constant zero fraction at fit time, so the fitted
    min-max scaling and PCA give it no weight: in a candidate it is invisible to the networks, and
    their spread cannot widen for it. Read from the step fitted on the raw fractions (the scaler's
    ``data_max_``, or the PCA's ``mean_`` with ``after_pca``), so earlier runs' featurisers answer too.
    """
    seen = {}
    for column in ("formula_charge", "formula_discharge"):
        fitted = featurizer.named_transformers_[column].steps[1][1]
        present = fitted.data_max_ if isinstance(fitted, MinMaxScaler) else fitted.mean_
        seen[column] = frozenset(Element.from_Z(int(z) + 1).symbol for z in np.flatnonzero(present > 0))
    return seen


def unseen_elements(featurizer: ColumnTransformer, electrodes: pd.DataFrame) -> list[str]:
    """Per electrode, the elements of its formulas outside :func:`training_elements`, in order of
    atomic number, space-separated ('' for an electrode inside the training chemistry)."""
    seen = training_elements(featurizer)
    flagged = []
    for charge, discharge in zip(electrodes["formula_charge"], electrodes["formula_discharge"]):
        outside = ({element for element in parse_formula(charge).elements
                    if element.symbol not in seen["formula_charge"]}
                   | {element for element in parse_formula(discharge).elements
                      if element.symbol not in seen["formula_discharge"]})
        flagged.append(" ".join(element.symbol for element in sorted(outside, key=lambda element: element.Z)))
    return flagged


def composition_outside_training(featurizer: ColumnTransformer, electrodes: pd.DataFrame) -> list[str] | None:
    """Per electrode, the elements whose share of a formula lies outside the training formulas' range
    at that end, as ``discharge:Na`` ('' when none); None where the formulas are scaled after their
    PCA (``features.formula_scaling: after_pca``), which keeps no range per element.

    The networks extrapolate there, and nothing else said so: 10^6 Na per FePO4 is an almost pure-Na
    formula, which model1 scored 0.63 V and 1004 mAh/g unflagged. Read from the min-max step fitted
    on the raw fractions, as :func:`dft_outside_training` reads the DFT fields'. An element no training
    formula held at all is :func:`unseen_elements`', not this.
    """
    flagged: list[list[str]] = [[] for _ in range(len(electrodes))]
    for end in ("charge", "discharge"):
        fractions, scaler = (step for _, step in featurizer.named_transformers_[f"formula_{end}"].steps[:2])
        if not isinstance(scaler, MinMaxScaler):
            return None
        shares = fractions.transform(electrodes[[f"formula_{end}"]])
        outside = ((shares > scaler.data_max_) | (shares < scaler.data_min_)) & (scaler.data_max_ > 0)
        for row, element in zip(*np.nonzero(outside)):
            flagged[row].append(f"{end}:{Element.from_Z(int(element) + 1).symbol}")
    return [" ".join(entries) for entries in flagged]


def dft_outside_training(featurizer: ColumnTransformer, electrodes: pd.DataFrame) -> list[str] | None:
    """Per electrode, the DFT fields whose value lies outside the training split's range,
    space-separated ('' when none); None for a feature set without DFT.

    The networks extrapolate there. A code that reports total energies lands hundreds of eV per atom
    outside MP's scale, which model2_phys's ion references were fitted in (energies of MP's
    functional without MP's corrections stay inside the range: no check on one row can see them).
    """
    if "dft" not in featurizer.named_transformers_:
        return None
    scaler = featurizer.named_transformers_["dft"]
    if isinstance(scaler, Pipeline):  # an earlier release's block was the bare MinMaxScaler
        scaler = scaler.named_steps["minmax"]
    values = electrodes[list(scaler.feature_names_in_)].to_numpy(dtype=float)
    outside = (values < scaler.data_min_) | (values > scaler.data_max_)
    return [" ".join(scaler.feature_names_in_[row]) for row in outside]


def unseen_space_groups(featurizer: ColumnTransformer, electrodes: pd.DataFrame) -> list[str] | None:
    """Per electrode, its space groups no training electrode had at that end, as ``charge:56
    discharge:108`` ('' when none); None without the space-group block (``features.space_groups``).

    Such a group's one-hot column was constant zero at fit time, so the PCA maps it to the point of
    no space group at all: the networks cannot tell it, as with an element no training formula held.
    """
    if "space_group" not in featurizer.named_transformers_:
        return None
    seen = featurizer.named_transformers_["space_group"].named_steps["pca"].mean_.reshape(2, 230) > 0
    flagged = []
    for charge, discharge in zip(electrodes["charge_space_group_number"], electrodes["discharge_space_group_number"]):
        flagged.append(" ".join(f"{end}:{int(group)}" for end, group, row in (("charge", charge, 0), ("discharge", discharge, 1))
                                if not seen[row, int(group) - 1]))
    return flagged


def applicability(featurizer: ColumnTransformer, electrodes: pd.DataFrame) -> pd.DataFrame:
    """Per electrode, what the training data cannot vouch for: ``battery_id``, ``unseen_elements``,
    ``composition_outside_training`` (formulas scaled before their PCA, the default), for a feature
    set with DFT ``dft_outside_training``, with space groups ``unseen_space_groups`` (the functions
    above)."""
    flags = pd.DataFrame({"battery_id": electrodes["battery_id"].to_numpy(),
                          "unseen_elements": unseen_elements(featurizer, electrodes)})
    composition = composition_outside_training(featurizer, electrodes)
    if composition is not None:
        flags["composition_outside_training"] = composition
    outside = dft_outside_training(featurizer, electrodes)
    if outside is not None:
        flags["dft_outside_training"] = outside
    groups = unseen_space_groups(featurizer, electrodes)
    if groups is not None:
        flags["unseen_space_groups"] = groups
    return flags


STEP_NAMES = {"minmax": "min-max", "pca": "PCA", "standardise": "standardised"}


def block_origin(name: str, transformer) -> str:
    """The block's origin with its scaling steps in the order they ran: ``features.formula_scaling``
    puts the formulas' min-max before or after the PCA, ``features.dft_scaling`` standardises the DFT."""
    steps = transformer.steps if isinstance(transformer, Pipeline) else []
    scaling = [STEP_NAMES[step] for step, _ in steps if step in STEP_NAMES]
    return ORIGINS[name].format(steps=" then ".join(scaling))


def describe_features(featurizer: ColumnTransformer) -> dict:
    """Each output column with the block it came from, and each block's in/out dimensions."""
    columns = []
    blocks = {}
    for name, transformer, inputs in featurizer.transformers_:
        if name == "remainder":
            continue
        out_names = list(transformer.get_feature_names_out())
        origin = block_origin(name, transformer)
        columns += [{"column": f"{name}__{out}", "block": name, "origin": origin} for out in out_names]
        blocks[name] = {"inputs": list(inputs), "n_out": len(out_names), "origin": origin}
        if isinstance(transformer, Pipeline) and "pca" in transformer.named_steps:
            pca = transformer.named_steps["pca"]
            blocks[name]["pca"] = {
                "n_in": int(pca.n_features_in_),
                "n_components": int(pca.n_components_),
                "explained_variance": float(pca.explained_variance_ratio_.sum()),
            }
    return {"n_features": len(columns), "blocks": blocks, "columns": columns}
