"""The terminology of the hub's FHIR (pure): code systems and extension URLs, the code tables
(glucose LOINC / MDC by unit and sample type, data-absent reasons, meter range status) and the
builders of codings and the CodeableConcepts built from them once (categories, Device types).
Why each code was chosen is in :mod:`edge.fhir`.
"""

from __future__ import annotations

RFC3986 = "urn:ietf:rfc:3986"
LOINC = "http://loinc.org"
MDC = "urn:iso:std:iso:11073:10101"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
PHD_CATEGORY = "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories"
DATA_ABSENT_REASON = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
GATEWAY_EXTENSION = "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice"
TZ_OFFSET_EXTENSION = "http://hl7.org/fhir/StructureDefinition/tz-offset"

#: sample type -> (MDC code, MDC reference id); None: the meter sent no type
GLUCOSE_MDC: dict[str | None, tuple[str, str]] = {
    "capillary_whole_blood": ("160184", "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD"),
    "capillary_plasma": ("160188", "MDC_CONC_GLU_CAPILLARY_PLASMA"),
    "venous_whole_blood": ("160192", "MDC_CONC_GLU_VENOUS_WHOLEBLOOD"),
    "venous_plasma": ("160196", "MDC_CONC_GLU_VENOUS_PLASMA"),
    "arterial_whole_blood": ("160200", "MDC_CONC_GLU_ARTERIAL_WHOLEBLOOD"),
    "arterial_plasma": ("160204", "MDC_CONC_GLU_ARTERIAL_PLASMA"),
    "control_solution": ("160208", "MDC_CONC_GLU_CONTROL"),
    "interstitial_fluid": ("160212", "MDC_CONC_GLU_ISF"),
    "undetermined_whole_blood": ("160364", "MDC_CONC_GLU_UNDETERMINED_WHOLEBLOOD"),
    "undetermined_plasma": ("160368", "MDC_CONC_GLU_UNDETERMINED_PLASMA"),
    None: ("160020", "MDC_CONC_GLU_GEN"),
}

#: wire unit -> (LOINC code, LOINC display, UCUM code, power of ten from the wire unit)
GLUCOSE_UNITS: dict[str, tuple[str, str, str, int]] = {
    "kg/L": ("41653-7", "Glucose [Mass/volume] in Capillary blood by Glucometer", "mg/dL", 5),
    "mol/L": ("14743-9", "Glucose [Moles/volume] in Capillary blood by Glucometer", "mmol/L", 3),
}

#: concentration_special -> data-absent-reason (code, display); anything else is "unknown"
ABSENT_REASONS: dict[str, tuple[str, str]] = {
    "nan": ("not-a-number", "Not a Number (NaN)"),
    "+inf": ("positive-infinity", "Positive Infinity (PINF)"),
    "-inf": ("negative-infinity", "Negative Infinity (NINF)"),
    "nres": ("error", "Error"),
    "reserved": ("error", "Error"),
}
UNKNOWN_REASON = ("unknown", "Unknown")

#: meter status -> (interpretation code, display, note)
RANGE_STATUS: dict[str, tuple[str, str, str]] = {
    "result_too_high": (
        "H", "High", "The meter reported the result as higher than it can measure (HI).",
    ),
    "result_too_low": (
        "L", "Low", "The meter reported the result as lower than it can measure (LO).",
    ),
}


def coding(system: str, code: str, display: str) -> dict[str, str]:
    """One Coding."""
    return {"system": system, "code": code, "display": display}


def category(code: str, display: str) -> list[dict[str, object]]:
    """An Observation's categories: the R4 one, and the PHD IG's."""
    return [
        {"coding": [coding(OBSERVATION_CATEGORY, code, display)]},
        {"coding": [coding(PHD_CATEGORY, "phd-observation", "PHD Observation")]},
    ]


#: the gateway Device's type
GATEWAY_TYPE = {
    "coding": [coding(MDC, "531981", "MDC_MOC_VMS_MDS_AHD")],
    "text": "Personal health gateway",
}
#: reading kind -> the sensor Device's type
SENSOR_TYPES: dict[str, dict[str, object]] = {
    kind: {"coding": [coding(MDC, "65573", "MDC_MOC_VMS_MDS_SIMP")], "text": text}
    for kind, text in (("heart_rate", "Heart rate sensor"), ("glucose", "Glucose meter"))
}
