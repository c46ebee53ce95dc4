"""Who may see what (pure): role × route × assignment → allow or 404.

Nothing here touches I/O: handlers ask :func:`decide` and turn ``NOT_FOUND`` into a 404 that
looks exactly like a route or patient that does not exist, so a refusal never hints that the
thing is there.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    CLINICIAN = "clinician"
    ADMIN = "admin"
    AUDITOR = "auditor"


class Area(StrEnum):
    """What a route shows; every route of the app belongs to exactly one area."""

    #: lists over the user's own patients (/patients, /alerts, the events stream)
    CLINICAL_LIST = "clinical_list"
    #: one patient's data (/patients/<p>, acknowledging its alerts, FHIR reads about it)
    PATIENT = "patient"
    #: users, patients, assignments, hubs
    ADMIN = "admin"
    #: the audit log
    AUDIT = "audit"
    #: the user's own things: preferences, sign-out, home
    SELF = "self"


class Decision(StrEnum):
    ALLOW = "allow"
    NOT_FOUND = "not_found"


def decide(role: str, area: Area, *, assigned: bool = False) -> Decision:
    """The one access rule. ``assigned``: the patient in question is assigned to the user
    (only meaningful for :attr:`Area.PATIENT`). Unknown roles see nothing."""
    try:
        r = Role(role)
    except ValueError:
        return Decision.NOT_FOUND
    if area is Area.SELF:
        return Decision.ALLOW
    if area is Area.PATIENT:
        # Clinical data follows the assignment, whatever the role.
        return Decision.ALLOW if assigned else Decision.NOT_FOUND
    allowed = {
        Area.CLINICAL_LIST: Role.CLINICIAN,
        Area.ADMIN: Role.ADMIN,
        Area.AUDIT: Role.AUDITOR,
    }
    return Decision.ALLOW if allowed[area] is r else Decision.NOT_FOUND


def home(role: str) -> str:
    """Where a user lands after signing in."""
    return {"clinician": "/patients", "admin": "/admin", "auditor": "/audit"}.get(role, "/me")


def visible_patients(assigned: list[str], requested: list[str] | None) -> list[str]:
    """The patients a query may touch: the requested ones that are assigned (all assigned
    ones when nothing is requested). Order follows ``assigned``."""
    if requested is None:
        return list(assigned)
    want = set(requested)
    return [p for p in assigned if p in want]
