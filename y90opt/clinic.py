"""The clinic's calendar: when a treatment can take place, in the site's own time zone.

A site treats on its treatment days (default Monday to Friday), not on its holidays, at its procedure time
(``[plan].procedure_time``, else the calibration's clock time) or, when it gives ``[plan].clinic_hours``,
at any time within those hours; never before the vial arrives (``[vials].delivered``) nor sooner than
``[plan].min_lead_time_h`` after the calibration. Candidate treatment times of ``plan`` (a case list, a
command-line range, the Optuna search) keep only the times the calendar admits, unless the user asks for
literal times (``--any-time``). Local times are computed with the IANA zone of ``[plan].site_timezone``,
so daylight-saving changes between calibration and treatment are handled.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt

from .case import WEEKDAYS, Case

#: Two candidate times closer than this are the same clock time (floating-point hours from a range).
CLOCK_TOLERANCE_S = 60.0


@dataclasses.dataclass(frozen=True)
class Calendar:
    """When the site treats. ``clinic_hours`` None means: only at ``clock``."""

    zone: _dt.tzinfo
    days: tuple[int, ...]
    clock: _dt.time
    clinic_hours: tuple[_dt.time, _dt.time] | None
    holidays: tuple[_dt.date, ...]
    earliest: _dt.datetime  # the vial's arrival or the minimum lead time after calibration, whichever is later
    latest: _dt.datetime | None = None  # the end of the vial's usable life

    @classmethod
    def from_case(cls, case: Case, calibration: _dt.datetime | None = None) -> Calendar:
        cal = case.calibration if calibration is None else calibration
        zone = case.site_zone()
        clock = case.plan.procedure_time or case.calibration.astimezone(zone).timetz().replace(tzinfo=None)
        earliest = cal + _dt.timedelta(hours=case.plan.min_lead_time_h)
        # the case's vial arrives at [vials].delivered; a vial of an earlier calibration week arrived as many
        # weeks earlier
        delivered = None if case.delivered is None else case.delivered - (case.calibration - cal)
        if delivered is not None and delivered > earliest:
            earliest = delivered
        latest = cal + _dt.timedelta(hours=case.usable_life_h)
        return cls(zone, case.plan.treatment_days, clock, case.plan.clinic_hours, case.plan.holidays, earliest, latest)

    def excludes(self, when: _dt.datetime) -> str | None:
        """Why the calendar does not admit ``when`` (an aware datetime), or None when it does."""
        local = when.astimezone(self.zone)
        if when < self.earliest:
            return "before the vial can be used (delivery or minimum lead time)"
        if self.latest is not None and when > self.latest:
            return "after the vial's usable life ([vials] usable_life_h)"
        if local.weekday() not in self.days:
            return f"not a treatment day ({WEEKDAYS[local.weekday()]})"
        if local.date() in self.holidays:
            return f"a holiday ({local.date().isoformat()})"
        t = local.time().replace(tzinfo=None)
        if self.clinic_hours is not None:
            lo, hi = self.clinic_hours
            if not lo <= t <= hi:
                return f"outside clinic hours ({lo:%H:%M}-{hi:%H:%M})"
            return None
        gap = abs(_seconds(t) - _seconds(self.clock))
        if min(gap, 86400 - gap) > CLOCK_TOLERANCE_S:
            return f"not at the procedure time ({self.clock:%H:%M})"
        return None

    def describe(self) -> str:
        days = ", ".join(WEEKDAYS[d] for d in self.days)
        when = (f"{self.clinic_hours[0]:%H:%M}-{self.clinic_hours[1]:%H:%M}" if self.clinic_hours
                else f"at {self.clock:%H:%M}")
        hol = f", {len(self.holidays)} holiday(s) excluded" if self.holidays else ""
        return f"{days} {when} ({self.zone}){hol}; not before {self.earliest.astimezone(self.zone):%a %Y-%m-%d %H:%M}"


def _seconds(t: _dt.time) -> float:
    return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6
