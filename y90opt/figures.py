"""Figures of a plan and of a sensitivity analysis, drawn from their Datasets (matplotlib, no pyplot state).

Each function takes a Dataset and a path, writes one figure there (format from the suffix) and returns the
path; nothing here computes a dose. Plan figures:

* :func:`heatmap_figure`: P(all primary targets met) over vial × treatment time, infeasible cells hatched,
  the recommendation outlined;
* :func:`dose_figure`: each constrained dose at the recommendation (5th-95th percentile and median), with
  the scenario's targets and limits;
* :func:`curve_figure`: P(targets) and P(each limit kept) against the vial activity at treatment, with every
  candidate and the 1 − risk line;
* :func:`tornado_figure`: the one-at-a-time view of one output of a sensitivity Dataset;
* :func:`joint_figure`: for several injections, P(all primary targets met) over the first two vials chosen
  (vial × vial) with every other choice (the days, any further vial) at the recommendation, infeasible cells
  hatched (the limits' border), the recommendation outlined.

The same Dataset gives the same bytes (no software or date metadata).
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

import numpy as np

from .results import quantity_label

#: Resolution of every figure [dots per inch].
DPI = 150

#: Most cells the heat map annotates with their probability.
MAX_ANNOTATED_CELLS = 120

# Colour-blind-safe colours (Okabe & Ito) so that print, screen and grey scale all read.
_TARGET_COLOUR = "#009E73"
_LIMIT_COLOURS = ("#D55E00", "#0072B2", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
_SUCCESS_COLOUR = "#000000"

_QUANTITY_ORDER = (
    "tumor_total", "perfused_mean", "normal_perfused", "whole_normal_liver", "whole_liver", "lung", "lung_cumulative",
)


def constrained_quantities(ds) -> list[str]:
    """Dose quantities the page plots: every tumour that receives a dose, NTAD, the lung, and every quantity
    a rule constrains, in a fixed reading order (tumours first, lungs last)."""
    qs = [str(q) for q in ds["quantity"].values]
    units = [str(u) for u in ds["unit"].values]
    gy = {q for q, u in zip(qs, units, strict=True) if u == "Gy"}
    ruled = {str(q) for q in ds["rule_quantity"].values}
    i, j = int(ds.attrs["recommended_index_vial"]), int(ds.attrs["recommended_index_time"])
    p95 = ds["dose_p95"].values[i, j] if "dose_p95" in ds else None
    out = []
    for k, q in enumerate(qs):
        if q.startswith("tumors.") and (q in ruled or p95 is None or p95[k] > 0):
            out.append(q)
    wanted = ruled | {"normal_perfused", "lung"}
    out += [q for q in _QUANTITY_ORDER if q in wanted and q in gy]
    return out


def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> str:
    # no software/date metadata: the same Dataset gives the same bytes
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    return path


def _rc():
    import matplotlib

    return matplotlib.rc_context({
        "font.size": 9.5,
        "axes.titlesize": 10.5,
        "axes.labelsize": 9.5,
        "legend.fontsize": 8.5,
        "xtick.labelsize": 8.5,
        "ytick.labelsize": 8.5,
        "hatch.linewidth": 0.8,
        "svg.hashsalt": "y90opt",
    })


def _time_ticks(ds) -> list[str]:
    """Tick labels for candidate times: local day name and date, clock time, hours after calibration."""
    out = []
    for local, h in zip(ds["time_local"].values, ds["hours_after_calibration"].values, strict=True):
        when = _dt.datetime.fromisoformat(str(local))
        out.append(f"{when.strftime('%a %d %b')}\n{when.strftime('%H:%M')}\n{float(h):.0f} h")
    return out


def _zone(ds) -> str:
    return str(ds.attrs.get("site_timezone", ""))


def heatmap_figure(ds, path: str) -> str:
    """P(all primary targets met) on the vial × treatment-time grid; infeasible cells hatched; the
    recommendation (or, when nothing is feasible, the least risky candidate) outlined."""
    from matplotlib.patches import PathPatch, Rectangle
    from matplotlib.path import Path

    ps = ds["p_success"].values.astype(float)
    feas = ds["feasible"].values.astype(bool)
    vials = ds["vial"].values.astype(float)
    nv, nt = ps.shape
    i0, j0 = int(ds.attrs["recommended_index_vial"]), int(ds.attrs["recommended_index_time"])
    ok = bool(int(ds.attrs["feasible"]))
    with _rc():
        fig = _figure(min(11.0, max(6.5, 1.0 + 0.95 * nt)), min(9.0, max(3.4, 1.6 + 0.42 * nv)))
        ax = fig.add_subplot()
        im = ax.imshow(ps, origin="lower", aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0,
                       extent=(-0.5, nt - 0.5, -0.5, nv - 0.5), interpolation="nearest")
        cb = fig.colorbar(im, ax=ax, pad=0.01)
        cb.set_label("P(all primary targets met) (probability, 0-1)")
        small = nv * nt <= MAX_ANNOTATED_CELLS
        # infeasible cells: one hatched patch made of every such cell (its hatch is drawn in screen units, so it
        # stays visible at any grid size, where per-cell hatches vanish once cells are a few pixels wide); the
        # pale veil keeps the colour readable beneath
        cells = [Path([(b - 0.5, a - 0.5), (b + 0.5, a - 0.5), (b + 0.5, a + 0.5), (b - 0.5, a + 0.5), (b - 0.5, a - 0.5)],
                      [Path.MOVETO, Path.LINETO, Path.LINETO, Path.LINETO, Path.CLOSEPOLY])
                 for a in range(nv) for b in range(nt) if not feas[a, b]]
        if cells:
            ax.add_patch(PathPatch(Path.make_compound_path(*cells), facecolor=(1, 1, 1, 0.45), edgecolor="#444444",
                                   hatch="///", linewidth=0.0, zorder=3))
        if small:
            for a in range(nv):
                for b in range(nt):
                    colour = "white" if ps[a, b] < 0.55 and feas[a, b] else "black"
                    ax.text(b, a, f"{ps[a, b]:.2f}", ha="center", va="center", fontsize=8.5, color=colour,
                            fontweight="bold" if (a, b) == (i0, j0) else "normal")
        mark = "#D55E00" if ok else "#CC79A7"
        ax.add_patch(Rectangle((j0 - 0.5, i0 - 0.5), 1, 1, fill=False, edgecolor=mark, linewidth=3.0, zorder=5))
        if not small:  # a cell a few pixels wide: a crosshair and a ring find it at any grid size
            ax.axhline(i0, color=mark, linewidth=0.9, linestyle="--", zorder=4)
            ax.axvline(j0, color=mark, linewidth=0.9, linestyle="--", zorder=4)
            ax.plot([j0], [i0], marker="o", markersize=14, markerfacecolor="none", markeredgecolor=mark,
                    markeredgewidth=2.5, zorder=6)
        step_t = max(1, int(math.ceil(nt / 10)))
        step_v = max(1, int(math.ceil(nv / 20)))
        ticks = _time_ticks(ds)
        ax.set_xticks(range(0, nt, step_t), [ticks[b] for b in range(0, nt, step_t)])
        ax.set_yticks(range(0, nv, step_v), [f"{vials[a]:g}" for a in range(0, nv, step_v)])
        ax.set_xlabel(f"treatment time (local, {_zone(ds)}; hours after calibration)")
        ax.set_ylabel("vial activity at calibration (GBq)")
        what = "recommended" if ok else "least risky"
        ax.set_title(f"P(targets met) per candidate; hatched: a limit fails; outlined: {what}", loc="left",
                     fontsize=9.5)
        return _save(fig, path)


def dose_figure(ds, path: str, nominal: dict[str, float] | None = None) -> str:
    """Each plotted dose at the recommendation: the 5th-95th percentile band, the median, the nominal dose,
    and the scenario's thresholds on that dose (targets green dashed, limits red solid). One panel per dose,
    each on its own linear scale from 0 Gy."""
    qs_all = [str(q) for q in ds["quantity"].values]
    qs = constrained_quantities(ds)
    i, j = int(ds.attrs["recommended_index_vial"]), int(ds.attrs["recommended_index_time"])
    rule_q = [str(x) for x in ds["rule_quantity"].values]
    rule_kind = [str(x) for x in ds["rule_kind"].values]
    rule_thr = ds["rule_threshold"].values.astype(float)
    rule_lab = [str(x) for x in ds["rule"].values]
    have_q = "dose_p50" in ds
    box = {"facecolor": "white", "edgecolor": "none", "pad": 0.6, "alpha": 0.85}
    with _rc():
        fig = _figure(8.2, 1.1 + 0.82 * max(1, len(qs)))
        axes = fig.subplots(max(1, len(qs)), 1, squeeze=False)[:, 0]
        for ax, q in zip(axes, qs, strict=False):
            k = qs_all.index(q)
            thr = [(rule_thr[r], rule_kind[r], rule_lab[r]) for r in range(len(rule_q)) if rule_q[r] == q]
            top = [t for t, _, _ in thr]
            if nominal and q in nominal:
                top.append(float(nominal[q]))
            if have_q:
                p05, p50, p95 = (float(ds[f"dose_{p}"].values[i, j, k]) for p in ("p05", "p50", "p95"))
                top.append(p95)
                ax.barh(0, p95 - p05, left=p05, height=0.46, color="#9ecae1", edgecolor="#3182bd",
                        label="5th-95th percentile")
                ax.plot([p50, p50], [-0.23, 0.23], color="#08306b", linewidth=2.8, solid_capstyle="butt",
                        label="median")
                ax.text(1.01, 0.5, f"{_reading(p05)} / {_reading(p50)} / {_reading(p95)}", transform=ax.transAxes, va="center",
                        ha="left", fontsize=8.5)
            hi = max(top + [1e-9]) * 1.12
            if nominal and q in nominal:
                ax.plot([nominal[q]], [0], marker="D", color="white", markeredgecolor="black", markersize=5.5,
                        linestyle="none", label="nominal (measured inputs)", zorder=4)
            for t, kind, lab in thr:
                if kind == "limit":
                    ax.axvline(t, color=_LIMIT_COLOURS[0], linewidth=2.0, label="limit (maximum dose)")
                    ax.text(t, 0.38, f" ≤ {t:g} {lab}", color=_LIMIT_COLOURS[0], fontsize=7.5, va="center",
                            ha="left", bbox=box)
                elif kind == "target":
                    ax.axvline(t, color=_TARGET_COLOUR, linewidth=2.0, linestyle="--", label="target (minimum dose)")
                    ax.text(t, 0.38, f"{lab} ≥ {t:g} ", color=_TARGET_COLOUR, fontsize=7.5, va="center",
                            ha="right", bbox=box)
                else:
                    ax.axvline(t, color=_TARGET_COLOUR, linewidth=1.4, linestyle=":",
                               label="secondary target (reported only)")
                    ax.text(t, -0.38, f" ≥ {t:g} {lab}", color=_TARGET_COLOUR, fontsize=7.5, va="center",
                            ha="left", bbox=box)
            ax.set_xlim(0, hi)
            ax.set_ylim(-0.6, 0.6)
            ax.set_yticks([0], [quantity_label(q)])
            ax.set_xlabel("absorbed dose (Gy)", fontsize=8, labelpad=1)
            ax.grid(axis="x", color="#e3e3e3", linewidth=0.6)
            ax.set_axisbelow(True)
        if have_q:
            axes[0].text(1.01, 1.12, "p05 / p50 / p95 (Gy)", transform=axes[0].transAxes, ha="left",
                         va="bottom", fontsize=8.5, fontweight="bold")
        handles: dict[str, Any] = {}
        for ax in axes:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(lab, h)
        if handles:
            fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
                       ncols=min(len(handles), 3), frameon=False)
        return _save(fig, path)


def curve_figure(ds, path: str) -> str:
    """P(targets) and P(each limit kept) against the vial activity at treatment (one sample set, exact for it),
    with each candidate marked on the P(targets) curve and the 1 − risk line."""
    grid = ds["activity"].values.astype(float)
    risk = float(ds.attrs["risk"])
    limits = [str(x) for x in ds["limit"].values]
    vials = ds["vial"].values.astype(float)
    s = ds["vial_at_treatment"].values.astype(float)
    ps = ds["p_success"].values.astype(float)
    feas = ds["feasible"].values.astype(bool)
    i0, j0 = int(ds.attrs["recommended_index_vial"]), int(ds.attrs["recommended_index_time"])
    with _rc():
        fig = _figure(7.8, 4.6)
        ax = fig.add_subplot()
        cl = ds["curve_p_limit"].values.astype(float)
        if cl.shape[1]:
            ok = np.all(cl >= 1 - risk - 1e-12, axis=1)
            if ok.any():
                lo_s, hi_s = grid[ok].min(), grid[ok].max()
                ax.axvspan(lo_s, hi_s, color="#eeeeee", zorder=0, label="every limit kept with P ≥ 1 − risk")
        ax.plot(grid, ds["curve_p_success"].values, color=_SUCCESS_COLOUR, linewidth=2.4, label="P(all primary targets met)")
        for k, lab in enumerate(limits):
            ax.plot(grid, cl[:, k], color=_LIMIT_COLOURS[k % len(_LIMIT_COLOURS)], linewidth=1.6,
                    linestyle=("-", "--", "-.", ":")[k % 4], label=f"P(limit {lab} kept)")
        ax.axhline(1 - risk, color="#777777", linewidth=1.0, linestyle=":", label=f"1 − risk = {1 - risk:.3g}")
        markers = "os^vDPX*<>"
        many = ps.size > 80  # a fine grid: small dots, no per-vial legend
        size = 8 if many else 30
        for a, v in enumerate(vials):
            m = "o" if many else markers[a % len(markers)]
            ax.scatter(s[a][feas[a]], ps[a][feas[a]], marker=m, s=size, color="#555555", zorder=4,
                       label=None if len(vials) > 10 or many else f"{v:g} GBq vial candidates")
            ax.scatter(s[a][~feas[a]], ps[a][~feas[a]], marker=m, s=size, facecolor="white", edgecolor="#555555",
                       linewidth=0.6 if many else 1.0, zorder=4)
        if many:
            ax.scatter([], [], marker="o", s=size, color="#555555", label=f"{ps.size} candidates")
        ok_plan = bool(int(ds.attrs["feasible"]))
        ax.scatter([s[i0, j0]], [ps[i0, j0]], marker="o", s=170, facecolor="none", edgecolor="#D55E00",
                   linewidth=2.5, zorder=5, label="recommendation" if ok_plan else "least risky candidate")
        ax.set_xscale("log")
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        # the stored curve spans far below the candidates; show the candidates' range with a margin
        ax.set_xlim(max(grid.min(), s.min() / 1.6), min(grid.max(), s.max() * 1.6))
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("vial activity at treatment (GBq, log scale)")
        ax.set_ylabel("probability (0-1)")
        ax.set_title("Probabilities against the activity at treatment (hollow markers: a limit fails)")
        ax.grid(color="#dddddd", linewidth=0.6, which="both")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        return _save(fig, path)





def tornado_figure(result: Any, output: str, path: str) -> str:
    """A tornado figure of one output: the output with each input at its low and high percentile (others
    nominal), bars sorted by their span, a line at the nominal output. Written to ``path`` (format from the
    suffix); returns ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from . import sensitivity_analysis as sensitivity

    ds = getattr(result, "dataset", result)
    if output not in set(ds["output"].values.tolist()):
        raise KeyError(f"unknown output {output!r}; expected one of {', '.join(ds['output'].values.tolist())}")
    sub = ds.sel(output=output)
    base = float(sub["oat_nominal"])
    lo = sub["oat_low"].values.astype(float)
    hi = sub["oat_high"].values.astype(float)
    span = np.nan_to_num(np.abs(hi - lo), nan=0.0)
    order = np.argsort(span, kind="stable")  # largest at the top
    unit = str(sub["output_units"].values)
    d = len(order)
    name = output.removeprefix("dose_gy.")
    title = quantity_label(name) if output.startswith("dose_gy.") else sensitivity.output_long_name(output)
    with _rc():
        fig = Figure(figsize=(8.0, 1.4 + 0.55 * d), dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        plo, phi = (f"{100 * q:.0f}th" for q in sensitivity.OAT_QUANTILES)
        for y, j in enumerate(order):
            ax.barh(y, lo[j] - base, left=base, color="#0072B2", label=f"input at its {plo} percentile" if y == 0 else None)
            ax.barh(y, hi[j] - base, left=base, color="#E69F00", label=f"input at its {phi} percentile" if y == 0 else None)
        labels = []
        for j in order:
            s = sub.isel(input=j)
            iu = str(s["input_units"].values)
            iu = "" if iu == "1" else f" {iu}"
            labels.append(f"{sensitivity.input_long_name(str(s['input'].values))}\n"
                          f"({float(s['input_low']):.3g} to {float(s['input_high']):.3g}{iu})")
        ax.set_yticks(range(d), labels)
        ax.axvline(base, color="black", linewidth=1.0, label=f"nominal: {_reading(base)} {unit}")
        ax.set_xlabel(f"{title} ({unit})")
        ax.set_title(f"{title}: one input at a time (5th to 95th percentile), the others at their measured values",
                     loc="left", fontsize=10, wrap=True)
        ax.legend(loc="best")
        fig.savefig(path, dpi=DPI, metadata={"Software": None} if str(path).endswith(".png") else None)
    return path


def _reading(x: float) -> str:
    """A number for reading on a figure: no scientific notation for doses."""
    ax = abs(x)
    return f"{x:.0f}" if ax >= 100 else f"{x:.1f}" if ax >= 10 else f"{x:.2f}" if ax >= 1 else f"{x:.3g}"


def joint_figure(ds, chosen: dict[str, Any], path: str) -> str:
    """P(all primary targets met) over vial × vial of a joint plan (:mod:`y90opt.joint_planner`), every other
    choice held at ``chosen`` (``{"vial_index": (J,), "time_index": (K,)}``); infeasible cells hatched, the
    choice outlined. With one vial chosen: P against that vial, a bar per candidate, infeasible ones hatched."""
    from matplotlib.patches import Rectangle

    vi = ds["candidate_vial_index"].values.astype(int)
    ti = ds["candidate_time_index"].values.astype(int)
    ps = ds["p_success"].values.astype(float)
    feas = ds["feasible"].values.astype(bool)
    vials = ds["candidate_vial_gbq"].values.astype(float)
    names = [str(x) for x in ds["injection"].values]
    cv, ct = np.asarray(chosen["vial_index"]), np.asarray(chosen["time_index"])
    free = [j for j in range(vi.shape[1]) if len(np.unique(vi[:, j])) > 1]
    with _rc():
        if len(free) >= 2:
            a, b = free[0], free[1]
            others = [j for j in range(vi.shape[1]) if j not in (a, b)]
            sel = np.all(ti == ct, axis=1) & np.all(vi[:, others] == cv[others], axis=1) if others else np.all(ti == ct, axis=1)
            ia, ib = sorted(set(vi[sel, a])), sorted(set(vi[sel, b]))
            grid = np.full((len(ia), len(ib)), np.nan)
            fgrid = np.zeros_like(grid, bool)
            va, vb = {}, {}
            for k in np.flatnonzero(sel):
                r, c = ia.index(vi[k, a]), ib.index(vi[k, b])
                grid[r, c], fgrid[r, c] = ps[k], feas[k]
                va[r], vb[c] = vials[k, a], vials[k, b]
            fig = _figure(min(10.0, max(6.0, 1.6 + 0.8 * len(ib))), min(8.0, max(3.6, 1.6 + 0.5 * len(ia))))
            ax = fig.add_subplot()
            im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            fig.colorbar(im, ax=ax, pad=0.01).set_label("P(all primary targets met)")
            for r in range(len(ia)):
                for c in range(len(ib)):
                    if not fgrid[r, c]:
                        ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, facecolor=(1, 1, 1, 0.45), edgecolor="#444444",
                                               hatch="///", linewidth=0.0, zorder=3))
                    if len(ia) * len(ib) <= MAX_ANNOTATED_CELLS and np.isfinite(grid[r, c]):
                        ax.text(c, r, f"{grid[r, c]:.2f}", ha="center", va="center", fontsize=8.5, zorder=4,
                                color="white" if grid[r, c] < 0.55 and fgrid[r, c] else "black")
            if cv[a] in ia and cv[b] in ib:
                ax.add_patch(Rectangle((ib.index(cv[b]) - 0.5, ia.index(cv[a]) - 0.5), 1, 1, fill=False,
                                       edgecolor="#D55E00", linewidth=3.0, zorder=5))
            ax.set_xticks(range(len(ib)), [f"{vb[c]:g}" for c in range(len(ib))])
            ax.set_yticks(range(len(ia)), [f"{va[r]:g}" for r in range(len(ia))])
            ax.set_xlabel(f"vial of injection {names[b]} (GBq at calibration)")
            ax.set_ylabel(f"vial of injection {names[a]} (GBq at calibration)")
            ax.set_title("P(targets met), days and other vials at the choice; hatched: a limit fails; outlined: choice",
                         loc="left", fontsize=9.5)
            return _save(fig, path)
        j = free[0] if free else 0
        others = [x for x in range(vi.shape[1]) if x != j]
        sel = np.all(ti == ct, axis=1) & (np.all(vi[:, others] == cv[others], axis=1) if others else True)
        ks = np.flatnonzero(sel)
        ks = ks[np.argsort(vials[ks, j], kind="stable")]
        fig = _figure(6.5, 3.6)
        ax = fig.add_subplot()
        for x, k in enumerate(ks):
            ax.bar(x, ps[k], color="#0072B2" if feas[k] else "#bbbbbb", hatch=None if feas[k] else "///",
                   edgecolor="#D55E00" if vi[k, j] == cv[j] else "#444444", linewidth=2.5 if vi[k, j] == cv[j] else 0.5)
        ax.set_xticks(range(len(ks)), [f"{vials[k, j]:g}" for k in ks])
        ax.set_ylim(0, 1)
        ax.set_xlabel(f"vial of injection {names[j]} (GBq at calibration)")
        ax.set_ylabel("P(all primary targets met)")
        ax.set_title("days at the choice; grey, hatched: a limit fails; outlined: choice", loc="left", fontsize=9.5)
        return _save(fig, path)


def cohort_figure(ds, path: str) -> str:
    """A cohort's distributions (``cohort.nc``): P(all primary targets met) across the patients planned, the
    vials and days chosen, the status, and how often each limit binds."""
    status = [str(x) for x in ds["status"].values]
    ran = np.array([s in ("ok", "low-success", "infeasible") for s in status])
    ps = ds["p_success"].values.astype(float)[ran]
    vials = ds["vial_gbq"].values.astype(float)[ran]
    hours = ds["hours_after_calibration"].values.astype(float)[ran]
    binding = [str(b) or "none" for b, r in zip(ds["binding_limit"].values, ran, strict=True) if r]
    with _rc():
        fig = _figure(11.0, 6.6)
        axes = fig.subplots(2, 2)
        ax = axes[0, 0]
        ax.hist(ps[np.isfinite(ps)], bins=np.linspace(0, 1, 21), color="#0072B2", edgecolor="white")
        ax.set_xlabel("P(all primary targets met) at the recommendation")
        ax.set_ylabel("patients")
        ax.set_title(f"{int(ran.sum())} patients planned", loc="left", fontsize=9.5)
        ax = axes[0, 1]
        kinds = ["ok", "low-success", "infeasible", "not-run", "failed"]
        counts = [status.count(k) for k in kinds]
        ax.bar(range(len(kinds)), counts, color=["#009E73", "#E69F00", "#D55E00", "#999999", "#000000"])
        ax.set_xticks(range(len(kinds)), kinds)
        ax.set_ylabel("patients")
        ax.set_title("status", loc="left", fontsize=9.5)
        ax = axes[1, 0]
        ok = np.isfinite(vials)
        if ok.any():
            values, n = np.unique(vials[ok], return_counts=True)
            ax.bar([f"{v:g}" for v in values], n, color="#56B4E9")
            hv, hn = np.unique(hours[ok], return_counts=True)
            label = ", ".join(f"{h:g} h: {c}" for h, c in zip(hv, hn, strict=True))
            ax.set_title(f"vial chosen (GBq); days: {label}"[:110], loc="left", fontsize=9.0)
        ax.set_xlabel("vial at calibration (GBq)")
        ax.set_ylabel("patients")
        ax = axes[1, 1]
        names, n = np.unique(np.array(binding, dtype=object), return_counts=True) if binding else ([], [])
        ax.barh(range(len(names)), n, color="#CC79A7")
        ax.set_yticks(range(len(names)), list(names))
        ax.set_xlabel("patients")
        ax.set_title("the limit that binds at the recommendation", loc="left", fontsize=9.5)

        return _save(fig, path)


def dvh_figure(edges, curves: dict, thresholds, path: str, method: str = "local deposition") -> str:
    """Cumulative dose-volume histograms (share of each VOI receiving at least a dose), the scenario's
    thresholds as vertical lines; ``method`` names the dose model in the title."""
    with _rc():
        fig = _figure(7.5, 4.2)
        ax = fig.add_subplot()
        for k, (name, c) in enumerate(curves.items()):
            ax.plot(edges, 100 * np.asarray(c), label=name, color=_LIMIT_COLOURS[k % len(_LIMIT_COLOURS)],
                    linestyle="-" if k < len(_LIMIT_COLOURS) else "--")
        for t in thresholds:
            ax.axvline(t, color="#999999", linewidth=0.8, linestyle=":")
        ax.set_xlabel("absorbed dose (Gy)")
        ax.set_ylabel("volume receiving at least it (%)")
        ax.set_ylim(0, 101)
        ax.legend(fontsize=8, loc="upper right")
        ax.set_title(f"cumulative DVH ({method}); dotted: the scenario's thresholds", loc="left", fontsize=9.5)
        return _save(fig, path)
