"""Comparisons between the groups of a report: a - b over seeds, paired where the runs allow,
with p-values adjusted for the family of comparisons a verdict rests on, estimates within each
kind of machine, and equivalence tests with their power.

Pairing. Two groups are paired over the seeds both finished (same data subset and batch order per
seed); a seed that only one of them finished is left out of the pairs and named in `incomplete`.
When a seed's two runs computed on different kinds of machine (kernels round differently between
CPU kinds and GPUs), the comparison is Welch's over all runs instead, so that no seed is dropped.

Family. Every comparison of one report, one measure (final accuracy, epochs to threshold) at a
time, is one family: the verdicts of a report rest on all of them together, so each p-value comes
with its Holm adjustment over the family, and the report's words follow the adjusted ones.

Machines. Where paired seeds computed on more than one kind of machine, each kind gets its own
estimate, and where there are two kinds, a Welch test of whether their per-seed differences
differ: a machine that moves the difference is a block, not noise to average over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from polarpack._io import printable
from polarpack.experiments.grid import UNUSED, CompareSpec
from polarpack.experiments.statistics import Equivalence, Interval, holm, t_interval, tost
from polarpack.training.config import TrainConfig

if TYPE_CHECKING:
    from polarpack.experiments.reporting import Group, Run

MEASURES = ("final_val_acc", "epochs_to_threshold")


@dataclass
class MachineEstimate:
    """A paired comparison restricted to the seeds that computed on one kind of machine."""

    machine: str
    seeds: list[int]
    final_val_acc: Interval | None
    epochs_to_threshold: Interval | None


@dataclass
class Comparison:
    name: str
    a: str
    b: str
    n: tuple[int, int]  # runs of a and b
    seeds: list[int]  # the seeds paired (empty: unpaired)
    final_val_acc: Interval | None
    epochs_to_threshold: Interval | None
    censored: bool
    pairing: str  # which machines and commits the pairs used
    equivalence: dict[str, Equivalence | None] = field(default_factory=dict)
    incomplete: list[str] = field(default_factory=list)  # seeds only one side finished
    never: list[str] = field(default_factory=list)  # runs that never reached the threshold
    # Holm over the report's comparisons, per measure: of a - b = 0 and of the TOST
    p_adjusted: dict[str, float | None] = field(default_factory=dict)
    tost_adjusted: dict[str, float | None] = field(default_factory=dict)
    by_machine: list[MachineEstimate] = field(default_factory=list)
    machines_differ: dict[str, Interval | None] = field(default_factory=dict)  # Welch, 2 kinds

    def equivalent(self, measure: str) -> bool:
        """TOST shows equivalence after the family's adjustment."""
        e, p = self.equivalence.get(measure), self.tost_adjusted.get(measure)
        return e is not None and e.equivalent and p is not None and p < e.alpha


def _matches(a: TrainConfig, b: TrainConfig, ignore: set[str]) -> bool:
    """b agrees with a on every option but the seed, `ignore` and those one of the two methods
    does not use."""
    unused = {k for k, used_not in UNUSED.items() if {a.method, b.method} & set(used_not)}
    skip = ignore | unused | {"seed"}
    return all(getattr(b, k) == v for k, v in a.to_dict().items() if k not in skip)


def _selects(group: Group, selector: Mapping[str, Any]) -> bool:
    """TOML has no null: "" in a selector means the option is not set."""
    config = group.config
    return bool(group.finished) and all(
        getattr(config, k, None) in (None, "") if v == "" else getattr(config, k, None) == v
        for k, v in selector.items()
    )


def incomplete_seeds(ga: Group, gb: Group) -> list[str]:
    """The seeds that only one of the two groups finished, which pairing leaves out."""
    a, b = set(ga.seeds), set(gb.seeds)
    return [f"s{s} (a only)" for s in sorted(a - b)] + [f"s{s} (b only)" for s in sorted(b - a)]


def paired_runs(ga: Group, gb: Group) -> tuple[list[Run], list[Run], str]:
    """The runs of the seeds both groups ran, paired, and which machines and commits they used;
    empty lists when the comparison must be unpaired: fewer than two seeds, or a seed whose two
    runs computed on different kinds of machine (comparing all runs unpaired then keeps every
    seed, where pairing would drop one)."""
    by_seed = {r.seed: r for r in gb.runs}
    pairs = [(ra, by_seed[ra.seed]) for ra in ga.runs if ra.seed in by_seed]
    straddle = [f"s{ra.seed}" for ra, rb in pairs if ra.machine != rb.machine]
    if straddle:
        return [], [], f"unpaired: {', '.join(straddle)} ran a and b on different machines"
    if not pairs:
        return [], [], "unpaired (no seed ran both)"
    machines: dict[str, list[int]] = {}
    commits: dict[str, list[int]] = {}
    for ra, rb in pairs:
        machines.setdefault(ra.machine, []).append(ra.seed)
        ca, cb = (ra.commit or "unknown")[:8], (rb.commit or "unknown")[:8]
        commits.setdefault(ca if ca == cb else f"{ca} (a) / {cb} (b)", []).append(ra.seed)
    text = "; ".join(f"{m}: {_seeds(s)}" for m, s in machines.items())
    text += "; commits " + ", ".join(f"{c}: {_seeds(s)}" for c, s in commits.items())
    if len(pairs) < 2:
        return [], [], f"unpaired (only one seed ran both: {text})"
    return [a for a, _ in pairs], [b for _, b in pairs], text


def _seeds(seeds: Sequence[int]) -> str:
    return "s" + ",".join(map(str, seeds))


def compare_each(
    groups: Sequence[Group], specs: Sequence[CompareSpec | Mapping[str, Any]]
) -> list[list[Comparison]]:
    """Per spec (a `CompareSpec`, or a ``[[compare]]`` table as a dict), its a-groups against
    their matching b-groups; an empty list says the spec found nothing to compare. The p-values
    are adjusted over all the specs' comparisons together (`adjust`)."""
    out = []
    for spec in specs:
        spec = spec if isinstance(spec, CompareSpec) else CompareSpec.from_table(spec)
        ignore = set(spec.a) | set(spec.b)
        made = []
        for ga in (g for g in groups if _selects(g, spec.a)):
            gb = next(
                (
                    g
                    for g in groups
                    if g is not ga and _selects(g, spec.b) and _matches(ga.config, g.config, ignore)
                ),
                None,
            )
            if gb is not None:
                made.append(comparison(spec.name, ga, gb, spec.margin))
        out.append(made)
    adjust([c for made in out for c in made])
    return out


def compare(
    groups: Sequence[Group], specs: Sequence[CompareSpec | Mapping[str, Any]]
) -> list[Comparison]:
    """Every spec's comparisons, in order, adjusted as one family per measure."""
    return [c for made in compare_each(groups, specs) for c in made]


def adjust(family: Sequence[Comparison]) -> None:
    """Holm-adjust, per measure, the p-values of no difference and of the equivalence tests of
    a family of comparisons (in place)."""
    for measure in MEASURES:
        raw = [getattr(c, measure).p_value if getattr(c, measure) else None for c in family]
        for c, p in zip(family, holm(raw), strict=True):
            c.p_adjusted[measure] = p
        tests = [c.equivalence.get(measure) for c in family]
        adjusted = holm([e.p_value if e else None for e in tests])
        for c, p in zip(family, adjusted, strict=True):
            if measure in c.equivalence:
                c.tost_adjusted[measure] = p


def crossing(run: Run, threshold: float) -> int | None:
    """The first epoch whose validation accuracy reaches the threshold; None: never."""
    return next((m["epoch"] for m in run.metrics if m["val_acc"] >= threshold), None)


def comparison(
    name: str, ga: Group, gb: Group, margins: Mapping[str, float] | None = None
) -> Comparison:
    """a - b, paired by seed where `paired_runs` allows, else Welch's over all runs; each margin
    adds an equivalence test. A family's adjustment is `adjust`'s."""
    ra, rb, pairing = paired_runs(ga, gb)
    paired = bool(ra)
    ra, rb = (ra, rb) if paired else (ga.runs, gb.runs)
    threshold = ga.threshold
    values = {
        "final_val_acc": ([r.final for r in ra], [r.final for r in rb]),
        "epochs_to_threshold": (
            [crossing(r, threshold) for r in ra],
            [crossing(r, threshold) for r in rb],
        ),
    }
    never = [
        f"s{r.seed} ({side})"
        for side, rs in (("a", ra), ("b", rb))
        for r in rs
        if crossing(r, threshold) is None
    ]
    censored = bool(never)
    intervals = {
        k: None if (k != "final_val_acc" and censored) else t_interval(*v, paired)
        for k, v in values.items()
    }
    equivalence = {
        k: None if (k != "final_val_acc" and censored) else tost(*values[k], paired, margin)
        for k, margin in (margins or {}).items()
    }
    made = Comparison(
        name,
        ga.label,
        gb.label,
        (ga.finished, gb.finished),
        [r.seed for r in ra] if paired else [],
        intervals["final_val_acc"],
        intervals["epochs_to_threshold"],
        censored,
        pairing,
        equivalence,
        incomplete=incomplete_seeds(ga, gb),
        never=never,
    )
    if paired:
        made.by_machine, made.machines_differ = by_machine(ra, rb, threshold, censored)
    return made


def by_machine(
    ra: Sequence[Run], rb: Sequence[Run], threshold: float, censored: bool
) -> tuple[list[MachineEstimate], dict[str, Interval | None]]:
    """Paired estimates within each kind of machine (none when one kind ran every pair), and,
    with two kinds of at least two seeds each, Welch's test of whether the per-seed differences
    differ between them."""
    kinds: dict[str, list[tuple[Run, Run]]] = {}
    for a, b in zip(ra, rb, strict=True):
        kinds.setdefault(a.machine, []).append((a, b))
    if len(kinds) < 2:
        return [], {}

    def diffs(pairs, measure):
        if measure == "final_val_acc":
            return [a.final - b.final for a, b in pairs]
        return [crossing(a, threshold) - crossing(b, threshold) for a, b in pairs]

    measures = [m for m in MEASURES if m == "final_val_acc" or not censored]
    estimates = [
        MachineEstimate(
            kind,
            [a.seed for a, _ in pairs],
            *(
                t_interval(diffs(pairs, m), [0.0] * len(pairs), paired=True)
                if m in measures
                else None
                for m in MEASURES
            ),
        )
        for kind, pairs in kinds.items()
    ]
    if len(kinds) != 2 or min(len(pairs) for pairs in kinds.values()) < 2:
        return estimates, {}  # Welch's test needs two kinds with a spread each
    first, second = kinds.values()
    differ = {m: t_interval(diffs(first, m), diffs(second, m), paired=False) for m in measures}
    return estimates, differ


# -- markdown ------------------------------------------------------------------------------------


def _p(p: float | None) -> str:
    return "-" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _interval(c: Interval | None, scale: float, adjusted: float | None = None) -> str:
    if c is None:
        return "-"
    if c.low is None:
        return f"{scale * c.diff:+.1f} (no interval: {_why(c)})"
    text = f"{scale * c.diff:+.1f} [{scale * c.low:+.1f}, {scale * c.high:+.1f}]"
    if c.p_value is None:
        return text
    return text + f"; p {_p(c.p_value)}" + ("" if adjusted is None else f", Holm {_p(adjusted)}")


def _why(c: Interval) -> str:
    """Why a difference has no interval: n=1, or every pair equal (no spread)."""
    return c.test.removeprefix("none (").removesuffix(")")


def _tost(e: Equivalence | None, adjusted: float | None, scale: float, c: Interval) -> str:
    if e is None:
        return "-"
    if e.low is None:  # the interval of the same values says why
        return f"±{scale * e.margin:g}: no test ({_why(c)})"
    if e.equivalent and adjusted is not None and adjusted < e.alpha:
        verdict = "equivalent"
    elif e.equivalent:
        verdict = "equivalent before the Holm adjustment, not after"
    else:
        verdict = "not shown equivalent"
    text = (
        f"±{scale * e.margin:g}: 90% [{scale * e.low:+.2f}, {scale * e.high:+.2f}], "
        f"p {_p(e.p_value)}, Holm {_p(adjusted)}: {verdict}"
    )
    if e.power is not None:
        need = "over 10,000" if e.n_for_80 is None else f"{e.n_for_80}"
        text += f"; power {e.power:.2f} at a true 0, 80% needs {need} pairs"
    return text


def comparisons_markdown(comparisons: Sequence[Comparison]) -> list[str]:
    """The comparisons table, what its columns mean, the pairs, and the per-machine block."""
    tested = any(c.equivalence for c in comparisons)
    head = (
        "| comparison | a | b | runs (a, b) | final val acc, points | epochs to threshold | test |"
    )
    head += " TOST final acc | TOST epochs |" if tested else ""
    lines = [
        "",
        "## Comparisons (a - b, 95% t interval over seeds)",
        "",
        head,
        "| --- " * (9 if tested else 7) + "|",
    ]
    for c in comparisons:
        epochs = (
            "n/a: " + ", ".join(c.never) + " never reached it"
            if c.censored
            else _interval(c.epochs_to_threshold, 1, c.p_adjusted.get("epochs_to_threshold"))
        )
        test = c.final_val_acc.test if c.final_val_acc else "-"
        final = _interval(c.final_val_acc, 100, c.p_adjusted.get("final_val_acc"))
        row = f"| {c.name} | {c.a} | {c.b} | {c.n[0]}, {c.n[1]} | {final} | {epochs} | {test} |"
        if tested:
            row += "".join(
                f" {_tost(c.equivalence.get(m), c.tost_adjusted.get(m), s, getattr(c, m))} |"
                for m, s in (("final_val_acc", 100), ("epochs_to_threshold", 1))
            )
        lines.append(row)
    family = sum(
        c.final_val_acc is not None and c.final_val_acc.p_value is not None for c in comparisons
    )
    lines += [
        "",
        "p: two-sided, of no difference; Holm: that p adjusted over this report's comparisons of "
        f"the same measure (a family of {family} for final accuracy), which is the one a verdict "
        "may read.",
    ]
    if tested:
        lines[-1] += (
            " TOST: two one-sided tests, equivalent when the 90% interval lies inside the margin "
            "and the Holm-adjusted TOST p is below 0.05; power: the chance that TOST shows "
            "equivalence when the true difference is 0 and the pairs spread as these did "
            "(normal differences, exact over the law of their sample spread), and the pairs 80% "
            "would need."
        )
    lines += ["", "Pairs (per comparison: the machines and commits of the paired runs):", ""]
    for c in comparisons:
        line = f"- {c.name} ({c.a} vs {c.b}): {printable(c.pairing)}"
        if c.incomplete:
            line += f"; not paired, finished on one side only: {', '.join(c.incomplete)}"
        lines.append(line)
    return lines + _sensitivity_markdown(comparisons) + _machines_markdown(comparisons)


def _sensitivity(c: Interval | None, scale: float, unit: str) -> str:
    if c is None or c.sd is None:
        return "-"
    found = "-" if c.detectable is None else f"±{scale * c.detectable:.1f}"
    return f"{scale * c.sd:.1f} {unit}; {found}"


def _sensitivity_markdown(comparisons: Sequence[Comparison]) -> list[str]:
    """Per paired comparison: the spread of its per-seed differences, and the true difference
    its seeds detect with 80% power, without which an interval around 0 says little."""
    paired = [c for c in comparisons if c.final_val_acc and c.final_val_acc.sd is not None]
    if not paired:
        return []
    lines = [
        "",
        "## What the pairs can detect",
        "",
        "Per paired comparison: the standard deviation of its per-seed differences, and the true "
        "difference that a two-sided paired t test of that many seeds (at 0.05) detects with 80% "
        "power at that spread (normal differences, noncentral t). Where an interval includes 0, "
        "a true difference smaller than that could well have gone undetected.",
        "",
        "| comparison | a | b | pairs | final val acc: SD; 80% power at | epochs to threshold: "
        "SD; 80% power at |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in paired:
        lines.append(
            f"| {c.name} | {c.a} | {c.b} | {len(c.seeds)} | "
            f"{_sensitivity(c.final_val_acc, 100, 'points')} | "
            f"{_sensitivity(c.epochs_to_threshold, 1, 'epochs')} |"
        )
    return lines


def _machines_markdown(comparisons: Sequence[Comparison]) -> list[str]:
    split = [c for c in comparisons if c.by_machine]
    if not split:
        return []
    lines = [
        "",
        "## Within each kind of machine",
        "",
        "Paired estimates over the seeds each kind of machine computed; where there are two "
        "kinds, Welch's test of whether their per-seed differences differ (a - b on the first "
        "kind minus a - b on the second). A difference between kinds is a block effect that "
        "the pooled interval averages over.",
        "",
        "| comparison | a | b | machine | seeds | final val acc, points | epochs to threshold |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in split:
        for e in c.by_machine:
            lines.append(
                f"| {c.name} | {c.a} | {c.b} | {e.machine} | {_seeds(e.seeds)} | "
                f"{_interval(e.final_val_acc, 100)} | {_interval(e.epochs_to_threshold, 1)} |"
            )
        if c.machines_differ:
            lines.append(
                f"| {c.name} | {c.a} | {c.b} | first kind - second (Welch) | | "
                f"{_interval(c.machines_differ.get('final_val_acc'), 100)} | "
                f"{_interval(c.machines_differ.get('epochs_to_threshold'), 1)} |"
            )
    return lines
